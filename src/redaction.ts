/**
 * What the sidecar sent may come back quoted: a token server's `error_description` or an upstream's text can
 * echo the client secret, the Basic header made of it, or the access token. Text from outside passes through
 * here before it reaches a message, a log line or a sender, whatever it is cut to afterwards.
 */

export const REDACTED = '[redacted]';
/** Shorter values would redact ordinary words; no client secret is this short. */
export const MIN_REDACT_LENGTH = 6;

/** The client secret as it can travel or be echoed: raw, form- or URL-encoded, inside a Basic header. */
export function secretForms(clientId: string, secret: string): string[] {
  return [
    secret,
    encodeURIComponent(secret),
    new URLSearchParams({ s: secret }).toString().slice(2),
    Buffer.from(`${clientId}:${secret}`).toString('base64'),
    // RFC 6749 §2.3.1: both form-encoded before the Basic header is made.
    Buffer.from(`${new URLSearchParams({ s: clientId }).toString().slice(2)}:${new URLSearchParams({ s: secret }).toString().slice(2)}`).toString('base64'),
  ];
}

/** `text` without any of `secrets`, and without anything shaped like a credential. */
export function redact(text: string, secrets: Iterable<string>): string {
  let out = text;
  for (const secret of secrets) {
    if (secret.length >= MIN_REDACT_LENGTH && out.includes(secret)) out = out.split(secret).join(REDACTED);
  }
  return withoutCredentials(out);
}

/** `Bearer …`, `Basic <base64>` and whatever looks like a JWT (or the start of one), replaced by `REDACTED`. */
export function withoutCredentials(text: string): string {
  return text
    .replace(/\bBearer\s+\S+/gi, `Bearer ${REDACTED}`)
    .replace(/\bBasic\s+[A-Za-z0-9+/]{8,}={0,2}/gi, `Basic ${REDACTED}`)
    .replace(/\beyJ[A-Za-z0-9_-]{6,}(?:\.[A-Za-z0-9_-]*){0,2}/g, REDACTED);
}
