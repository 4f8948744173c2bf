/**
 * Read the claims of a JWT access token without verifying it (RFC 7519 §7.2
 * steps 1–6, no signature check).
 *
 * The sidecar is the token's client, not its audience: it only needs `exp`
 * and `iat` for the token's lifetime (alone without `expires_in`, a bound on
 * it with), and the scopes for diagnostics.
 * The upstream verifies the signature.
 */

export interface JwtClaims {
  exp?: number;
  iat?: number;
  scope?: string[];
  client_id?: string;
  [claim: string]: unknown;
}

/** The payload of a compact JWS, or undefined when the token is opaque. */
export function decodeJwtClaims(token: string): JwtClaims | undefined {
  const parts = token.split('.');
  if (parts.length !== 3 || !parts[1]) return undefined;
  let payload: unknown;
  try {
    payload = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) return undefined;
  const claims = payload as Record<string, unknown>;
  const scope = claims['scope'];
  return {
    ...claims,
    exp: typeof claims['exp'] === 'number' ? claims['exp'] : undefined,
    iat: typeof claims['iat'] === 'number' ? claims['iat'] : undefined,
    // XSUAA puts scopes in an array, RFC 9068 §2.2.3 in a space-separated string.
    scope: Array.isArray(scope)
      ? scope.filter((s): s is string => typeof s === 'string')
      : typeof scope === 'string'
        ? scope.split(' ').filter(Boolean)
        : undefined,
  };
}
