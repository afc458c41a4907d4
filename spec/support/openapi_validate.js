// spec/support/openapi_validate.js: validate OpenAPI documents with a third-party validator
// (@seriousme/openapi-schema-validator: the official OpenAPI 3.0/3.1 JSON schemas, $refs resolved).
//   node spec/support/openapi_validate.js FILE...
// Prints one JSON line per file {file, valid, version, errors}; exits 1 if any is invalid.
'use strict';
const { Validator } = require('@seriousme/openapi-schema-validator');

(async () => {
  let bad = 0;
  for (const file of process.argv.slice(2)) {
    const v = new Validator();
    const res = await v.validate(file);
    if (!res.valid) bad++;
    console.log(JSON.stringify({ file, valid: res.valid, version: v.version, errors: res.valid ? undefined : res.errors }));
  }
  process.exit(bad ? 1 : 0);
})().catch((e) => { console.error(e.message); process.exit(2); });
