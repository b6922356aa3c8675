// @google-cloud/storage with Application Default Credentials found through
// the metadata endpoint (a Compute client, no key): a V4 signed URL for one
// object, which the library signs through IAM signBlob as the metadata
// server's account.
// Usage: node signed_url.js BUCKET OBJECT. Prints one JSON line.
'use strict';
const {Storage} = require('@google-cloud/storage');

async function main() {
  const [bucketName, objectName] = process.argv.slice(2);
  const [url] = await new Storage()
    .bucket(bucketName)
    .file(objectName)
    .getSignedUrl({version: 'v4', action: 'read', expires: Date.now() + 15 * 60 * 1000});
  console.log(JSON.stringify({url}));
}

main().catch(e => {
  console.error(e);
  process.exit(1);
});
