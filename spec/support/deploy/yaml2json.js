// spec/support/deploy/yaml2json.js: YAML (every document of every file named, or stdin) → one
// JSON array on stdout, for the Lua specs (cjson) — merge keys (<<) resolved, empty documents
// dropped. A parse error exits 1 naming the file.
'use strict';
const fs = require('fs');
const YAML = require('yaml');

const files = process.argv.slice(2);
const inputs = files.length ? files.map((f) => [f, fs.readFileSync(f, 'utf8')]) : [['<stdin>', fs.readFileSync(0, 'utf8')]];
const out = [];
for (const [name, text] of inputs) {
  for (const doc of YAML.parseAllDocuments(text, { merge: true })) {
    if (doc.errors.length) {
      process.stderr.write(`${name}: ${doc.errors.map((e) => e.message).join('; ')}\n`);
      process.exit(1);
    }
    const value = doc.toJS({ maxAliasCount: -1 });
    if (value !== null && value !== undefined) out.push(value);
  }
}
process.stdout.write(JSON.stringify(out));
