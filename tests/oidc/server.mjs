// A real OAuth 2.0 authorization server / OpenID Provider for the tests: panva's `oidc-provider`
// (an OpenID Certified implementation), configured by the test, with a small launcher around it.
// Not a fake of ours: client authentication (private_key_jwt, client_secret_*), the
// client-credentials grant, scopes, token lifetimes and introspection are the package's.
//
//   node server.mjs --config FILE [--port N] [--exit-with-parent PID]
//
// FILE (JSON): {"clients": [client metadata, RFC 7591], "scopes": ["system/Observation.write", ...],
//               "accessTokenTtl": seconds (client-credentials tokens; default 3600),
//               "users": [{"sub": "nurse-1", "name": "Nora Nurse", "groups": ["ward-3"]}, ...]}
//
// With "users", the provider also signs people in for the authorization code flow (PKCE
// required for every client, S256): its accounts are those users (`findAccount`; the claims
// `sub`, `name` from scope `profile` and `groups` from scope `groups`, in the ID token only
// with "idTokenClaims": true and not for a user with "claimsAtUserinfoOnly": true, always at
// the userinfo endpoint). The login and consent pages are
// oidc-provider's own development interactions (`devInteractions`): a form with `login` (a
// user's `sub`) and `password` (not checked: these are test accounts), then a consent form
// with a "Continue" button; a browser test fills them in. A login that is no configured user
// is refused by `findAccount` (the authorization ends in an error). RP-initiated logout is the
// package's `/session/end`.
// Prints one line `{"port": N, "issuer": "http://127.0.0.1:N"}` on stdout when ready.
// Discovery at `/.well-known/openid-configuration`; token endpoint `/token`; introspection
// `/token/introspection`. `GET /__stats` reports what the tests count: tokens issued, and the
// token endpoint's refusals (error, error_description).
import http from 'node:http';
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

// The package's start-up warnings that do not apply to a test's throw-away provider: the
// in-memory adapter, its development signing keys (access tokens here are opaque), and Node.js
// 20 (it runs on 20; the package's support matrix names 22 LTS and later).
const warn = console.warn;
console.warn = (...a) => {
  const text = String(a[0] ?? '');
  if (/^oidc-provider WARNING: (Unsupported runtime|a quick start development-only|quick start development-only signing keys)/.test(text)) return;
  warn(...a);
};

const args = process.argv.slice(2);
const arg = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const config = JSON.parse(readFileSync(arg('--config'), 'utf8'));
const parent = arg('--exit-with-parent');
if (parent) {
  // Started by a test process: exit when it is gone.
  setInterval(() => {
    try {
      process.kill(Number(parent), 0);
    } catch {
      process.exit(0);
    }
  }, 500).unref();
}

const stats = { issued: 0, refused: [] };
let handler = (_req, res) => {
  res.writeHead(503);
  res.end();
};
const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/__stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    return res.end(JSON.stringify(stats));
  }
  return handler(req, res);
});

server.listen(Number(arg('--port') || 0), '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const users = config.users || [];
  const provider = new Provider(issuer, {
    clients: config.clients || [],
    scopes: config.scopes || [],
    claims: { openid: ['sub'], profile: ['name'], groups: ['groups'] },
    conformIdTokenClaims: !config.idTokenClaims,
    pkce: { required: () => true },
    cookies: { keys: ['iomt-test-provider-cookie-key-not-a-secret'] },
    async findAccount(_ctx, id) {
      const user = users.find((u) => u.sub === id);
      if (!user) return undefined;
      return {
        accountId: user.sub,
        async claims(use) {
          // A user with "claimsAtUserinfoOnly" has only `sub` in the ID token, as providers
          // that release profile and group claims at the userinfo endpoint do.
          if (use === 'id_token' && user.claimsAtUserinfoOnly) return { sub: user.sub };
          return { sub: user.sub, name: user.name, groups: user.groups || [] };
        },
      };
    },
    clientAuthMethods: ['private_key_jwt', 'client_secret_basic', 'client_secret_post'],
    enabledJWA: {
      clientAuthSigningAlgValues: ['RS256', 'RS384', 'ES256', 'ES384', 'PS384'],
    },
    features: {
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      devInteractions: { enabled: users.length > 0 },
    },
    ttl: {
      ClientCredentials: config.accessTokenTtl || 3600,
      // The sign-in flow's artifacts (set, so the package does not warn of its defaults).
      AccessToken: 3600,
      IdToken: 3600,
      Interaction: 600,
      Session: 8 * 3600,
      Grant: 8 * 3600,
    },
  });
  provider.on('grant.success', () => {
    stats.issued += 1;
  });
  provider.on('grant.error', (_ctx, err) => {
    stats.refused.push({ error: err.error, error_description: err.error_description, detail: err.error_detail });
  });
  handler = provider.callback();
  process.stdout.write(JSON.stringify({ port, issuer }) + '\n');
  // The test reads that one line and may close the pipe: anything later goes to stderr.
  process.stdout.on('error', () => {});
  console.log = (...a) => console.error(...a);
  console.info = (...a) => console.error(...a);
});
