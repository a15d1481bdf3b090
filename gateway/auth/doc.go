// Package auth verifies the JSON Web Tokens kpush clients present and turns
// their claims into channel permissions.
//
// A Verifier is built once from Config (auth.* in kpush.yaml) and checks a
// token's signature (HS256 with a shared secret, RS256 or ES256 with public
// keys from PEM files or a JWKS file) and its exp, nbf, iss and aud claims,
// with a small clock skew. A valid token yields a Grant: the token's subject,
// its expiry, and the channel patterns it may subscribe to, taken from a
// configurable claim (default "channels") plus the configured grants, where
// {sub} stands for the token's subject.
//
// Patterns are dot-separated: "*" matches exactly one non-empty segment and
// a final ">" matches one or more trailing segments, so "ticks.*" allows
// "ticks.AAPL" and "user.42.>" allows "user.42.orders" and "user.42.a.b".
//
// Concurrency: a Verifier and the Grants it returns are immutable and safe
// for concurrent use. Verify does no I/O; key files are read by New.
package auth
