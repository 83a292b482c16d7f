// panva's oidc-provider, configured from a JSON file, for the caddy-oidc
// interoperability suite (integration/interop) and the FAPI tests.
//
//   node server.mjs <config.json>
//
// It listens on 127.0.0.1 (port 0 unless the config names one), then prints
// one line of JSON, {"issuer": "http://127.0.0.1:<port>"}, on stdout.
//
// The config (every field optional except clients):
//   clients      client metadata, as oidc-provider takes it
//   accounts     {"<login>": {"claims": {...}}}: the dev login screen takes
//                any password, so the account id is the login typed in
//   claims       scope -> claims (default: openid sub; email; profile with groups)
//   ttl          {"AccessToken": 20, ...} in seconds
//   features     deep-merged over the defaults below (introspection,
//                revocation, backchannelLogout, clientCredentials,
//                devInteractions on); a FAPI run turns on dPoP, PAR, JAR...
//   resources    {"<resource indicator>": {"scope": "api", "format": "opaque",
//                "formats": {"<client_id>": "jwt"}}}: resource servers for
//                RFC 8707; the access token format per client
//   rotateRefreshToken  default true: every refresh rotates (reuse revokes the grant)
//   loopbackFetch  default true: outgoing requests (back-channel logout,
//                jwks_uri) to 127.0.0.0/8 and ::1 are allowed; oidc-provider
//                refuses special-use addresses otherwise
//   provider     any other top-level oidc-provider configuration, merged last
//   tls          {"cert": "<PEM file>", "key": "<PEM file>"}: serve HTTPS (the
//                issuer is then https://127.0.0.1:<port>); client certificates
//                are requested, not required, for a later mTLS setup
//   mtls         {"cert": "<PEM file>", "key": "<PEM file>", "ca": "<PEM file>"}:
//                serve HTTPS as tls does and turn on features.mTLS (RFC 8705):
//                tls_client_auth, self_signed_tls_client_auth and
//                certificate-bound access tokens. A client certificate is
//                requested, not required, and verified against ca; the
//                registered tls_client_auth_subject_dn is compared with the
//                certificate's subject in RFC 4514 form. cfg.features.mTLS
//                can turn any of the three off. With "aliases": true the
//                issuer's port asks for no client certificate; a second
//                port that does serves the token, userinfo, introspection
//                and revocation endpoints, announced as the discovery
//                document's mtls_endpoint_aliases (RFC 8705 §5).
//   dpopNonces   true: every DPoP proof must carry the server's current
//                nonce (RFC 9449 §8); off by default. The nonce secret is a
//                fresh 32-byte Buffer, which JSON cannot carry.
//
// Test-only endpoints (on the same port, under /__interop/):
//   GET /__interop/stats  grants answered per grant_type (ok / refused),
//       revocations, back-channel logouts sent, end_session confirmations,
//       and the latest refresh token issued per client (so a test can ask
//       the IdP whether it is still active after a logout), and why the
//       token endpoint refused (token_errors: "<error>: <error_detail>",
//       e.g. "invalid_client: client certificate was not verified").
import { createServer } from 'node:http';
import { createServer as createTLSServer } from 'node:https';
import { X509Certificate, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function merge(base, over) {
  const out = { ...base };
  for (const [k, v] of Object.entries(over ?? {})) {
    out[k] = isObject(v) && isObject(base[k]) ? merge(base[k], v) : v;
  }
  return out;
}

function signingKeys() {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return [{ ...rsa, kid: 'rs256-1', alg: 'RS256', use: 'sig' }, { ...ec, kid: 'es256-1', alg: 'ES256', use: 'sig' }];
}

const loopback = (hostname) => hostname === 'localhost' || hostname === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(hostname);

const stats = {
  token: {},
  revocation: { ok: 0, refused: 0 },
  introspection: { ok: 0, refused: 0 },
  backchannel: { ok: 0, error: 0, errors: [] },
  end_session: 0,
  latest_refresh_token: {},
  token_errors: [],
};

const accounts = cfg.accounts ?? {};
const resources = cfg.resources ?? {};

const tls = cfg.mtls ?? cfg.tls;
// rejectUnauthorized stays off with mtls too: oidc-provider decides per
// client (certificateAuthorized below), and browsers come without a certificate.
const tlsServer = (requestCert) => createTLSServer({
  cert: readFileSync(tls.cert),
  key: readFileSync(tls.key),
  ca: cfg.mtls ? readFileSync(cfg.mtls.ca) : undefined,
  requestCert,
  rejectUnauthorized: false,
});
const listen = (srv, port) => new Promise((resolve) => { srv.listen(port, '127.0.0.1', resolve); });
const server = tls ? tlsServer(!cfg.mtls?.aliases) : createServer();
await listen(server, cfg.port ?? 0);
const issuer = `${tls ? 'https' : 'http'}://127.0.0.1:${server.address().port}`;
const aliasServer = cfg.mtls?.aliases ? tlsServer(true) : undefined;
let discovery;
if (aliasServer) {
  await listen(aliasServer, 0);
  const base = `https://127.0.0.1:${aliasServer.address().port}`;
  discovery = {
    mtls_endpoint_aliases: {
      token_endpoint: `${base}/token`,
      userinfo_endpoint: `${base}/me`,
      introspection_endpoint: `${base}/token/introspection`,
      revocation_endpoint: `${base}/token/revocation`,
    },
  };
}

const features = merge({
  devInteractions: { enabled: true },
  introspection: { enabled: true },
  revocation: { enabled: true },
  backchannelLogout: { enabled: true },
  clientCredentials: { enabled: true },
  resourceIndicators: {
    enabled: true,
    defaultResource: async (_ctx, _client, oneOf) => oneOf,
    useGrantedResource: async () => false,
    getResourceServerInfo: async (_ctx, indicator, client) => {
      const rs = resources[indicator];
      if (!rs) {
        throw new Provider.errors.InvalidTarget();
      }
      return {
        scope: rs.scope ?? 'api',
        audience: indicator,
        accessTokenFormat: rs.formats?.[client.clientId] ?? rs.format ?? 'opaque',
        accessTokenTTL: cfg.ttl?.AccessToken ?? 3600,
      };
    },
  },
}, cfg.features);
if (cfg.mtls) {
  features.mTLS = {
    enabled: true,
    certificateBoundAccessTokens: true,
    tlsClientAuth: true,
    selfSignedTlsClientAuth: true,
    ...features.mTLS,
    // The certificate the client presented on this connection, as PEM.
    getCertificate: (ctx) => ctx.socket.getPeerX509Certificate?.()?.toString(),
    // Verified by Node against the ca file during the handshake.
    certificateAuthorized: (ctx) => ctx.socket.authorized === true,
    certificateSubjectMatches: (ctx, property, expected) => {
      if (property !== 'tls_client_auth_subject_dn') {
        throw new Error(`this test server compares only tls_client_auth_subject_dn, not ${property}`);
      }
      // Node lists the subject's attributes one per line, most significant
      // first; RFC 4514 (what the client registered) is the reverse, comma-separated.
      const subject = new X509Certificate(features.mTLS.getCertificate(ctx)).subject;
      return subject.split('\n').reverse().join(',') === expected;
    },
  };
}
if (cfg.dpopNonces) {
  features.dPoP = { ...features.dPoP, nonceSecret: randomBytes(32), requireNonce: () => true };
}

const configuration = merge({
  clients: cfg.clients,
  jwks: { keys: signingKeys() },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  claims: cfg.claims ?? {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username', 'groups'],
  },
  ttl: {
    AccessToken: 3600, IdToken: 3600, RefreshToken: 86400, Grant: 86400, Session: 86400, Interaction: 600,
    ClientCredentials: 3600, ...cfg.ttl,
  },
  features,
  rotateRefreshToken: cfg.rotateRefreshToken ?? true,
  // The mTLS methods must be listed as well as enabled in features.mTLS.
  ...(discovery && { discovery }),
  ...(cfg.mtls && {
    clientAuthMethods: [
      'client_secret_basic', 'client_secret_jwt', 'client_secret_post', 'private_key_jwt', 'none',
      'tls_client_auth', 'self_signed_tls_client_auth',
    ],
  }),
  findAccount: async (_ctx, id) => {
    const a = accounts[id];
    if (!a) {
      return undefined;
    }
    return { accountId: id, claims: async () => ({ sub: id, ...a.claims }) };
  },
  fetch: (url, options) => {
    // Lift the SSRF guard for loopback targets only: the suite's Caddy
    // listens on 127.0.0.1.
    if ((cfg.loopbackFetch ?? true) && loopback(new URL(url).hostname)) {
      delete options.dispatcher;
    }
    return globalThis.fetch(url, options);
  },
}, cfg.provider);

const provider = new Provider(issuer, configuration);

provider.on('backchannel.success', () => { stats.backchannel.ok += 1; });
provider.on('backchannel.error', (_ctx, err) => {
  stats.backchannel.error += 1;
  stats.backchannel.errors.push(String(err?.message ?? err));
});
provider.on('end_session.success', () => { stats.end_session += 1; });
provider.on('grant.error', (_ctx, err) => {
  stats.token_errors.push(`${err?.error ?? err?.message}: ${err?.error_detail ?? ''}`);
});

provider.use(async (ctx, next) => {
  if (ctx.path === '/__interop/stats') {
    ctx.type = 'json';
    ctx.body = stats;
    return;
  }
  await next();
  if (ctx.method !== 'POST') {
    return;
  }
  const outcome = ctx.status === 200 ? 'ok' : 'refused';
  if (ctx.path === '/token') {
    const gt = ctx.oidc?.params?.grant_type ?? 'unknown';
    stats.token[gt] ??= { ok: 0, refused: 0 };
    stats.token[gt][outcome] += 1;
    const clientId = ctx.oidc?.client?.clientId;
    if (outcome === 'ok' && clientId && ctx.body?.refresh_token) {
      stats.latest_refresh_token[clientId] = ctx.body.refresh_token;
    }
  } else if (ctx.path === '/token/revocation') {
    stats.revocation[outcome] += 1;
  } else if (ctx.path === '/token/introspection') {
    stats.introspection[outcome] += 1;
  }
});

server.on('request', provider.callback());
aliasServer?.on('request', provider.callback());
process.stdout.write(`${JSON.stringify({ issuer })}\n`);

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => { server.close(); aliasServer?.close(); process.exit(0); });
}
