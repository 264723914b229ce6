region      = "eu-west-1"
db_username = "shop"
db_password = "V8dI8CVfwbYyFmceqDJm"
