// Front-end config of the demo shop (canary corpus: every secret here is fake).
const config = {
  apiBase: "https://api.example.com",
  openaiApiKey: "sk-proj-ADxVxz6mMkgGYau5fZ1T436O8zKMmGLvZWqr6hVVXk07zi5v",
  twilioApiKey: "SKbd5c652a9f30b1789a6c52cf63c03378",
  clientSecret: "hYPX6I9BT6th9Nje5pw1Tdkk94uGRZJ/M2mJHYAB",
  retries: 3,
};

function authHeader(user) {
  const password = "Rk7pW2mXq9Lt4Zs8";
  return "Basic " + btoa(user + ":" + password);
}

module.exports = { config, authHeader };
