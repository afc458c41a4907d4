// spec/support/deploy/k8s_validate.js: validate Kubernetes objects (a JSON array on stdin)
// with kubernetes-models — each object against the OpenAPI schema of its apiVersion and kind.
// Prints a JSON array, one entry per object: {kind, name, ok, error} or {kind, name, skipped}
// for kinds the package does not model (the Prometheus Operator's CRDs).
'use strict';
const fs = require('fs');

const objects = JSON.parse(fs.readFileSync(0, 'utf8'));
const results = objects.map((obj) => {
  const kind = obj.kind;
  const name = obj.metadata && obj.metadata.name;
  let Model;
  try {
    Model = require(`kubernetes-models/${obj.apiVersion}/${kind}`)[kind];
  } catch (e) {
    return { kind, name, apiVersion: obj.apiVersion, skipped: true };
  }
  try {
    new Model(obj).validate();
    return { kind, name, apiVersion: obj.apiVersion, ok: true };
  } catch (e) {
    return { kind, name, apiVersion: obj.apiVersion, ok: false, error: String(e.message || e) };
  }
});
process.stdout.write(JSON.stringify(results));
