// @google-cloud/storage: list a bucket, then download one object (its
// CRC32C checked by the library against x-goog-hash).
// Usage: node storage.js BUCKET OBJECT. Prints one JSON line.
'use strict';
const crypto = require('crypto');
const {Storage} = require('@google-cloud/storage');

async function main() {
  const [bucketName, objectName] = process.argv.slice(2);
  const bucket = new Storage().bucket(bucketName);
  const [files] = await bucket.getFiles();
  const [data] = await bucket.file(objectName).download({validation: 'crc32c'});
  console.log(
    JSON.stringify({
      names: files.map(f => f.name),
      bytes: data.length,
      sha256: crypto.createHash('sha256').update(data).digest('hex'),
    })
  );
}

main().catch(e => {
  console.error(e);
  process.exit(1);
});
