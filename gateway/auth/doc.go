// Package auth verifies the JSON Web Tokens kpush clients present and turns
// their claims into channel permissions.
//
// A Verifier is built once from Config (auth.* in kpush.yaml) and checks a
// token's signature (HS256 with a shared secret, RS256 or ES256 with public
// keys from PEM files, a JWKS file, or an identity provider's JWKS URL) and
// its exp, nbf, iss and aud claims, with a small clock skew. A valid token
// yields a Grant: the token's subject, its expiry, and the channel patterns
// it may subscribe to, taken from a configurable claim (default "channels")
// plus the configured grants, where {sub} stands for the token's subject.
//
// Patterns are dot-separated: "*" matches exactly one non-empty segment and
// a final ">" matches one or more trailing segments, so "ticks.*" allows
// "ticks.AAPL" and "user.42.>" allows "user.42.orders" and "user.42.a.b".
//
// Keys change without a restart: Run re-reads the key files when their
// content changes and keeps the jwks_url set current (on a schedule, on
// cache expiry, and on a rate-limited refetch when a token names an unknown
// kid). A source that fails keeps the keys it last gave.
//
// Concurrency: a Verifier is safe for concurrent use; the keys in service
// are an immutable snapshot swapped atomically, so Verify takes no lock and
// does no I/O. VerifyWait may wait, bounded by its context and
// jwks_fetch_timeout, for a refetch. Grants are immutable. Run owns every
// fetch and file read after New and returns when its context ends.
package auth
