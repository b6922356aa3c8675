// getIdTokenClient() through the metadata endpoint: the proxy mints a real
// ID token for the audience (IAM generateIdToken as the target account).
// Usage: node id_token.js AUDIENCE. Prints one JSON line.
'use strict';
const {GoogleAuth} = require('google-auth-library');

async function main() {
  const [audience] = process.argv.slice(2);
  const client = await new GoogleAuth().getIdTokenClient(audience);
  const headers = await client.getRequestHeaders();
  const authorization =
    typeof headers.get === 'function'
      ? headers.get('authorization')
      : headers.Authorization || headers.authorization;
  const token = authorization.replace(/^Bearer /, '');
  const claims = JSON.parse(
    Buffer.from(token.split('.')[1], 'base64url').toString()
  );
  console.log(
    JSON.stringify({
      client: client.constructor.name,
      aud: claims.aud,
      email: claims.email,
      token,
    })
  );
}

main().catch(e => {
  console.error(e);
  process.exit(1);
});
