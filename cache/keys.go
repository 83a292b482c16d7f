package cache

// Every key starts with one of these namespaces, so that metrics can tell
// them apart and no two kinds of value can collide. Keys are built only by
// the helpers below: a route's keys carry its namespace (a hash of issuer
// and client), so one route never reads another's entries.
const (
	// NSSession holds cache-store sessions, by the hash of their id.
	NSSession = "sess"
	// NSIntrospection holds introspection results, by the hash of the token.
	NSIntrospection = "tok"
	// NSAttempt records login attempts already used (their state's hash).
	NSAttempt = "att"
	// NSReplay records logout tokens already used (their jti's hash).
	NSReplay = "jti"
	// NSRevocation holds the revocation set, per issuer (an IdP session or
	// a user spans the clients of the issuer).
	NSRevocation = "rev"
	// NSLease holds refresh leases; NSRefresh the results published under them.
	NSLease   = "lease"
	NSRefresh = "rfr"
	// NSPreservedPost holds form POSTs kept across a login (preserve_post),
	// by the hash of their attempt's state.
	NSPreservedPost = "post"
	// NSDPoP records DPoP proofs a route accepted (their jti's hash), so a
	// proof replayed to any replica is refused (RFC 9449 §11.1).
	NSDPoP = "dpop"
)

// namespaces are the metric labels of cache lookups, "other" last.
var namespaces = [...]string{NSSession, NSIntrospection, NSAttempt, NSReplay, NSRevocation, NSLease, NSRefresh, NSPreservedPost, NSDPoP, "other"}

// SessionKey is where a cache-store session of a route lives; idHash is a
// hash of the session id (the id itself is a credential). One
// concatenation: it runs on every request of a cache-kept session.
func SessionKey(route, idHash string) string { return NSSession + ":" + route + ":" + idHash }

// IntrospectionKey is where a route's introspection result for a token
// (by its hash) is kept.
func IntrospectionKey(route, tokenHash string) string {
	return NSIntrospection + ":" + route + ":" + tokenHash
}

// AttemptKey records that a route's login attempt (by its state's hash)
// was used.
func AttemptKey(route, stateHash string) string { return NSAttempt + ":" + route + ":" + stateHash }

// PreservedPostKey is where a route's login attempt (by its state's hash)
// keeps the form POST it will submit again.
func PreservedPostKey(route, stateHash string) string {
	return NSPreservedPost + ":" + route + ":" + stateHash
}

// ReplayKey records that a route accepted a logout token (by the hash of
// its issuer and jti).
func ReplayKey(route, jtiHash string) string { return NSReplay + ":" + route + ":" + jtiHash }

// DPoPProofKey records that a route accepted a DPoP proof (by the hash of
// its key's thumbprint and jti); keep it until the proof's iat leaves the
// accepted window (provider.DPoPProof.Expiry).
func DPoPProofKey(route, jtiHash string) string { return NSDPoP + ":" + route + ":" + jtiHash }

// RevocationKey is where a revocation is shared; id is "<kind>:<issuer>|<id>".
func RevocationKey(id string) string { return NSRevocation + ":" + id }

// RevocationPrefix starts every revocation key (for Scan and Follow).
const RevocationPrefix = NSRevocation + ":"

// LeaseKey and RefreshKey are the lease of a refresh flight (by the hash of
// its route and refresh token) and the result published under it. They
// share a hash tag: the fenced publish touches both in one script, which a
// cluster runs only on keys of one slot.
func LeaseKey(flight string) string   { return NSLease + ":{" + flight + "}" }
func RefreshKey(flight string) string { return NSRefresh + ":{" + flight + "}" }

func namespaceOf(key string) string {
	for i := 0; i < len(key) && i < 8; i++ {
		if key[i] == ':' {
			return key[:i]
		}
	}
	return "other"
}
