"""Every SQL statement of the product: schema and migrations, files/spans, the job queue, read views."""
