// google-auth-library as an unmodified program uses it: getClient() finds
// the "VM service account" through the metadata endpoint (GCE_METADATA_HOST),
// then one authorised request goes through the proxy (HTTPS_PROXY).
// Usage: node auth.js BUCKET. Prints one JSON line.
'use strict';
const {GoogleAuth} = require('google-auth-library');

async function main() {
  const [bucket] = process.argv.slice(2);
  const auth = new GoogleAuth({
    scopes: ['https://www.googleapis.com/auth/cloud-platform'],
  });
  const client = await auth.getClient();
  const credentials = await auth.getCredentials();
  const projectId = await auth.getProjectId();
  const res = await client.request({
    url: `https://storage.googleapis.com/storage/v1/b/${bucket}/o`,
  });
  console.log(
    JSON.stringify({
      client: client.constructor.name,
      email: credentials.client_email,
      projectId,
      status: res.status,
      seen: res.data.emulator,
    })
  );
}

main().catch(e => {
  console.error(e);
  process.exit(1);
});
