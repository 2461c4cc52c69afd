// panva's oidc-provider configured as an Open Energy-style directory, or with --ib1 as an IB1 Trust
// Framework authorization server, for fapi-host's interop tests (tests/tests/interop_oidc.rs,
// interop_oidc_ib1.rs). Test fixture only: it listens on 127.0.0.1, keeps everything in memory and
// prints access (and refresh) tokens in its event log so that the tests can search for them.
//
//   node server.mjs --cert server.pem --key server.key --ca ca.pem --clients clients.json \
//       [--port 0] [--mtls-port 0] [--token-ttl 300] [--ib1 [--refresh-ttl 3600] [--no-rotation]]
//
// - issuer https://127.0.0.1:<port> (plain TLS, no client certificate requested): discovery and the
//   top-level endpoints, like the real directory's public host;
// - https://127.0.0.1:<mtls-port> (client certificate requested and verified against --ca): the
//   `mtls_endpoint_aliases` (token, introspection, revocation);
// - client_credentials only, tls_client_auth by the certificate's subject DN (RFC 8705 2.1), opaque
//   access tokens bound to the certificate (cnf.x5t#S256), RFC 7662 introspection.
//
// --clients is a JSON array of {"client_id", "subject_dn" (RFC 4514, e.g. "CN=a,O=b"), "scope"}; a
// client with "jwks" (its public keys) authenticates with private_key_jwt instead (RFC 7523, its
// "token_endpoint_auth_signing_alg" or ES256), still over mTLS with certificate-bound tokens.
// Environment: OIDC_PORT, OIDC_MTLS_PORT, OIDC_TOKEN_TTL are used when the flag is absent.
//
// DPoP (RFC 9449): a client entry with "dpop": true is registered with dpop_bound_access_tokens
// instead of tls_client_certificate_bound_access_tokens (its token requests need a proof; its
// tokens are bound to the proof's key, cnf.jkt, only: oidc-provider requires one of the two); then, or with OIDC_DPOP=1, features.dPoP is on with a nonce required in every
// proof. Every request with a DPoP header adds a "dpop" event (listener, path, status, proof,
// proof_nonce, nonce_sent, token_type).
//
// stdout: one JSON object per line. First {"event":"ready","issuer","mtls_origin","oidc_provider"},
// then "request" (listener, method, path, status), "token_issued" (listener, client_id, scope,
// expires_in, access_token, x5t#S256, client_auth, client_assertion), "grant_error", "introspection", "introspection_error",
// "server_error", "sync". Everything else (oidc-provider's notices) goes to stderr.
// Exits when stdin closes, on SIGTERM or on SIGINT; a line "sync ID" on stdin is answered by
// {"event":"sync","id":"ID"} after every earlier event.
//
// --ib1: the IB1 Trust Framework profile (consent: tests/tests/interop_oidc_ib1.rs) instead:
// - one listener, TLS 1.3 only, a client certificate requested (verified against --ca) but not
//   required (the household's browser has none); issuer https://127.0.0.1:<port>/accounts, the
//   provider mounted under /accounts, its metadata at the RFC 8414 location
//   /.well-known/oauth-authorization-server/accounts (with mtls_endpoint_aliases equal to the
//   top-level endpoints); the OpenID location /accounts/.well-known/openid-configuration answers 404;
// - a --clients entry whose client_id is an https URL is a consumer registered with that Directory
//   URL as its id: tls_client_auth by the certificate's URI SAN (tls_client_auth_san_uri = client_id),
//   authorization_code and refresh_token, a native client (any loopback redirect port, RFC 8252
//   7.3: redirect_uris [http://127.0.0.1/callback]); other entries are as above (the data
//   provider's introspection client);
// - PAR required, PKCE required (S256), certificate-bound tokens, devInteractions (login and
//   consent forms) for the household; a refresh token with every code, not tied to the browser
//   session, rotated on every use (the spent one consumed: presented again, it revokes the grant),
//   lasting --refresh-ttl (default 3600) seconds (with --no-rotation: never rotated, a refresh is
//   answered with the same refresh token, as RFC 6749 section 6 allows); resource indicators off,
//   so that a licence URL is a plain scope in the token;
// - more events: "token_issued" gains grant_type, refresh_token and, for a refresh,
//   spent_refresh_token (the one presented: printed, as the access tokens are, for the leak
//   searches), "par" (client_id, status, error), "revocation" (client_id, status, token_type_hint).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

// oidc-provider prints its notices with console.info: keep stdout for the event log.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

const { default: Provider } = await import('oidc-provider');
const version = createRequire(import.meta.url)('oidc-provider/package.json').version;

const { values: opt } = parseArgs({
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    ca: { type: 'string' },
    clients: { type: 'string' },
    port: { type: 'string', default: process.env.OIDC_PORT ?? '0' },
    'mtls-port': { type: 'string', default: process.env.OIDC_MTLS_PORT ?? '0' },
    'token-ttl': { type: 'string', default: process.env.OIDC_TOKEN_TTL ?? '300' },
    'refresh-ttl': { type: 'string', default: '3600' },
    ib1: { type: 'boolean', default: false },
    'no-rotation': { type: 'boolean', default: false },
  },
});
const ib1 = opt.ib1;
const refreshTtl = Number.parseInt(opt['refresh-ttl'], 10);
for (const required of ['cert', 'key', 'ca', 'clients']) {
  if (!opt[required]) {
    console.error(`server.mjs: --${required} FILE is required`);
    process.exit(2);
  }
}
const tokenTtl = Number.parseInt(opt['token-ttl'], 10);
if (!(tokenTtl > 0)) {
  console.error('server.mjs: --token-ttl must be a positive number of seconds');
  process.exit(2);
}
if (!(refreshTtl > 0)) {
  console.error('server.mjs: --refresh-ttl must be a positive number of seconds');
  process.exit(2);
}

const emit = (event) => process.stdout.write(`${JSON.stringify({ ...event, time_ms: Date.now() })}\n`);

const tls = {
  cert: fs.readFileSync(opt.cert),
  key: fs.readFileSync(opt.key),
  ca: fs.readFileSync(opt.ca),
  minVersion: ib1 ? 'TLSv1.3' : 'TLSv1.2',
};
// The application is attached once the issuer (which needs the port) is known.
let app = (req, res) => {
  res.statusCode = 503;
  res.end();
};
const serve = (listener) => (req, res) => {
  req.fapiListener = listener;
  const path = req.url.split('?')[0];
  res.on('finish', () => emit({
    event: 'request', listener, method: req.method, path, status: res.statusCode,
  }));
  app(req, res);
};
// Plain TLS: no CertificateRequest at all.
const plain = ib1 ? undefined : https.createServer({ ...tls }, serve('plain'));
// mTLS: a certificate is requested and verified against --ca; a missing or unverified one is left
// to oidc-provider (certificateAuthorized below), so that the client gets an OAuth error.
const mtls = https.createServer({ ...tls, requestCert: true, rejectUnauthorized: false }, serve('mtls'));

const listen = (server, port) => new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number.parseInt(port, 10) || 0, '127.0.0.1', () => resolve(server.address().port));
});
const plainPort = ib1 ? undefined : await listen(plain, opt.port);
const mtlsPort = await listen(mtls, ib1 ? opt.port : opt['mtls-port']);
// ib1: one listener; the provider is mounted under this path of it.
const mount = '/accounts';
const issuer = ib1 ? `https://127.0.0.1:${mtlsPort}${mount}` : `https://127.0.0.1:${plainPort}`;
const mtlsOrigin = `https://127.0.0.1:${mtlsPort}`;

// RFC 4514 string of a subject: Node gives the RDNs first to last, one per line.
const rfc4514 = (subject) => subject.split('\n').reverse().join(',');

// private_key_jwt clients: registered public keys, one algorithm; tls_client_auth: the subject DN.
const clientAuth = (c) => (c.jwks
  ? {
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: c.jwks,
    token_endpoint_auth_signing_alg: c.token_endpoint_auth_signing_alg ?? 'ES256',
  }
  : { token_endpoint_auth_method: 'tls_client_auth', tls_client_auth_subject_dn: c.subject_dn });
// ib1: a consumer registered under its Directory URL, authenticated by the certificate's URI SAN.
const consent = (c) => ({
  client_id: c.client_id,
  token_endpoint_auth_method: 'tls_client_auth',
  tls_client_auth_san_uri: c.client_id,
  tls_client_certificate_bound_access_tokens: true,
  application_type: 'native',
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  redirect_uris: ['http://127.0.0.1/callback'],
  scope: c.scope || undefined,
  id_token_signed_response_alg: 'ES256',
});
const clients = JSON.parse(fs.readFileSync(opt.clients, 'utf8')).map((c) => (ib1 && c.client_id.startsWith('https://') ? consent(c) : {
  client_id: c.client_id,
  ...clientAuth(c),
  tls_client_certificate_bound_access_tokens: true,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: c.scope || undefined,
  // oidc-provider requires one proof of possession at a time: DPoP instead of the certificate.
  ...(c.dpop ? { dpop_bound_access_tokens: true, tls_client_certificate_bound_access_tokens: false } : {}),
  // Only opaque access tokens are issued; the metadata must still name an algorithm we have a key for.
  id_token_signed_response_alg: 'ES256',
}));
const privateKeyJwt = clients.some((c) => c.token_endpoint_auth_method === 'private_key_jwt');
const scopes = [...new Set(clients.flatMap((c) => (c.scope ?? '').split(' ').filter(Boolean)))];
const dpop = process.env.OIDC_DPOP === '1' || clients.some((c) => c.dpop_bound_access_tokens);

// Signing keys are needed by oidc-provider's JWKS even though every token here is opaque.
const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'interop', use: 'sig', alg: 'ES256' };

const peer = (ctx) => {
  const socket = ctx.req.socket;
  return typeof socket.getPeerX509Certificate === 'function' ? socket.getPeerX509Certificate() : undefined;
};

const provider = new Provider(issuer, {
  clients,
  scopes,
  clientAuthMethods: privateKeyJwt ? ['tls_client_auth', 'private_key_jwt'] : ['tls_client_auth'],
  // FAPI 2.0 section 5.4.1: never HS256 or RS256 for client assertions.
  ...(privateKeyJwt ? { enabledJWA: { clientAuthSigningAlgValues: ['PS256', 'ES256', 'EdDSA'] } } : {}),
  jwks: { keys: [jwk] },
  ttl: { ClientCredentials: tokenTtl, ...(ib1 ? { AccessToken: tokenTtl, RefreshToken: refreshTtl } : {}) },
  ...(ib1 ? {
    pkce: { required: () => true },
    // Every code yields a refresh token (not only with offline_access), not tied to the browser
    // session, rotated on every use.
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async () => false,
    rotateRefreshToken: () => !opt['no-rotation'],
    // Login: any name; no claims (no ID token is asked for).
    findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  } : {}),
  features: {
    devInteractions: { enabled: ib1 },
    ...(ib1 ? {
      pushedAuthorizationRequests: { enabled: true, requirePushedAuthorizationRequests: true },
      // Off: with resource indicators, a scope that is not an OpenID one leaves the access token.
      resourceIndicators: { enabled: false },
    } : {}),
    introspection: { enabled: true },
    revocation: { enabled: true },
    clientCredentials: { enabled: true },
    // Nonces from a fresh secret, demanded in every proof (they rotate every 60 s).
    dPoP: dpop
      ? { enabled: true, nonceSecret: crypto.randomBytes(32), requireNonce: () => true }
      : { enabled: false },
    mTLS: {
      enabled: true,
      tlsClientAuth: true,
      certificateBoundAccessTokens: true,
      getCertificate: (ctx) => peer(ctx),
      certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
      certificateSubjectMatches: (ctx, property, expected) => {
        const cert = peer(ctx);
        if (!cert) return false;
        if (property === 'tls_client_auth_san_uri') {
          // The certificate's single URI SAN (IB1: the Directory URL).
          const uris = (cert.subjectAltName ?? '').split(', ').filter((n) => n.startsWith('URI:'));
          return uris.length === 1 && uris[0] === `URI:${expected}`;
        }
        return property === 'tls_client_auth_subject_dn' && rfc4514(cert.subject) === expected;
      },
    },
  },
  discovery: {
    mtls_endpoint_aliases: ib1
      ? {
        token_endpoint: `${issuer}/token`,
        introspection_endpoint: `${issuer}/token/introspection`,
        revocation_endpoint: `${issuer}/token/revocation`,
        pushed_authorization_request_endpoint: `${issuer}/request`,
      }
      : {
        token_endpoint: `${mtlsOrigin}/token`,
        introspection_endpoint: `${mtlsOrigin}/token/introspection`,
        revocation_endpoint: `${mtlsOrigin}/token/revocation`,
      },
  },
});

provider.on('grant.success', (ctx) => {
  const body = ctx.body ?? {};
  const cert = peer(ctx);
  emit({
    event: 'token_issued',
    listener: ctx.req.fapiListener,
    client_id: ctx.oidc.client?.clientId,
    scope: body.scope,
    expires_in: body.expires_in,
    access_token: body.access_token,
    ...(ib1 ? {
      grant_type: ctx.oidc.params?.grant_type,
      refresh_token: body.refresh_token ?? null,
      spent_refresh_token: ctx.oidc.params?.refresh_token ?? null,
    } : {}),
    'x5t#S256': cert ? crypto.hash('sha256', cert.raw, 'base64url') : null,
    client_auth: ctx.oidc.client?.clientAuthMethod,
    client_assertion: ctx.oidc.params?.client_assertion ?? null,
  });
});
provider.on('grant.error', (ctx, err) => emit({
  event: 'grant_error',
  listener: ctx.req.fapiListener,
  client_id: ctx.oidc?.client?.clientId ?? ctx.oidc?.params?.client_id,
  error: err.error,
  error_description: err.error_description,
  error_detail: err.error_detail,
}));
provider.on('introspection.error', (ctx, err) => emit({
  event: 'introspection_error', listener: ctx.req.fapiListener, error: err.error, error_description: err.error_description, error_detail: err.error_detail,
}));
provider.on('server_error', (ctx, err) => emit({
  event: 'server_error', listener: ctx.req.fapiListener, message: String(err?.message ?? err),
}));
provider.use(async (ctx, next) => {
  await next();
  if (ctx.oidc?.route === 'introspection' && ctx.status === 200) {
    emit({
      event: 'introspection', listener: ctx.req.fapiListener, client_id: ctx.oidc.client?.clientId, active: ctx.body?.active,
    });
  }
  if (ctx.oidc?.route === 'pushed_authorization_request') {
    emit({
      event: 'par', client_id: ctx.oidc.client?.clientId ?? null, status: ctx.status, error: ctx.body?.error ?? null,
    });
  }
  if (ctx.oidc?.route === 'revocation') {
    emit({
      event: 'revocation', client_id: ctx.oidc.client?.clientId ?? null, status: ctx.status, token_type_hint: ctx.oidc.params?.token_type_hint ?? null,
    });
  }
});

if (dpop) {
  // The proofs received (for the tests' leak searches) and the nonces each carried and was sent.
  const claims = (jwt) => {
    try {
      return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString('utf8'));
    } catch {
      return {};
    }
  };
  provider.use(async (ctx, next) => {
    const proof = ctx.get('DPoP');
    await next();
    if (proof) {
      emit({
        event: 'dpop',
        listener: ctx.req.fapiListener,
        path: ctx.path,
        status: ctx.status,
        proof,
        proof_nonce: claims(proof).nonce ?? null,
        nonce_sent: ctx.response.get('dpop-nonce') || null,
        token_type: ctx.body?.token_type ?? null,
        error: ctx.body?.error ?? null,
      });
    }
  });
}

const callback = provider.callback();
// ib1: the provider sees paths below the mount (req.originalUrl keeps the whole one, from which it
// builds its URLs); the RFC 8414 location is answered by its discovery route, the OpenID one is not.
const wellKnown = `/.well-known/oauth-authorization-server${mount}`;
app = ib1
  ? (req, res) => {
    const [path, query] = req.url.split(/\?(.*)/s);
    const notFound = () => {
      res.statusCode = 404;
      res.end();
    };
    if (path === wellKnown) {
      req.originalUrl = `${mount}/.well-known/openid-configuration`;
      req.url = '/.well-known/openid-configuration';
    } else if (path === `${mount}/.well-known/openid-configuration`) {
      return notFound();
    } else if (path.startsWith(`${mount}/`)) {
      req.originalUrl = req.url;
      req.url = path.slice(mount.length) + (query ? `?${query}` : '');
    } else {
      return notFound();
    }
    return callback(req, res);
  }
  : callback;
emit({ event: 'ready', issuer, mtls_origin: mtlsOrigin, oidc_provider: version, token_ttl: tokenTtl });

const stop = () => {
  plain?.close();
  mtls.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// "sync ID" on stdin: answered by {"event":"sync","id":ID} once every earlier event is written, so
// that a reader knows it has seen them all.
let pending = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  pending += chunk;
  for (let i = pending.indexOf('\n'); i >= 0; i = pending.indexOf('\n')) {
    const line = pending.slice(0, i).trim();
    pending = pending.slice(i + 1);
    if (line.startsWith('sync ')) emit({ event: 'sync', id: line.slice(5) });
  }
});
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.resume();
