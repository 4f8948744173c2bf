/** What "no secret in any output" means in the fault suites: the client secret in each form it could leak in. */
import { expect } from 'vitest';

/** The client secret as it could leak: raw, inside a Basic header, form- or URL-encoded, or JSON-escaped. */
export function secretForms(clientId: string, secret: string): string[] {
  return [
    secret,
    Buffer.from(`${clientId}:${secret}`).toString('base64'),
    Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(secret)}`).toString('base64'),
    encodeURIComponent(secret),
    new URLSearchParams({ s: secret }).toString().slice(2),
    JSON.stringify(secret).slice(1, -1),
  ];
}

/** No form of the secret, no private key and no stack trace (raw, or escaped inside JSON) in `text`. */
export function expectNoSecretOrStack(text: string, forms: readonly string[]): void {
  for (const form of forms) expect(text).not.toContain(form);
  expect(text).not.toMatch(/BEGIN [A-Z ]*PRIVATE KEY/);
  // A stack frame on its own line, or as JSON holds it (`\n    at fn (file:1:2)`).
  expect(text).not.toMatch(/(?:\n|\\n)\s+at \S+ \(/);
  expect(text).not.toMatch(/(?:\n|\\n)\s+at (?:file:|node:|\/)\S+:\d+:\d+/);
}

/**
 * A private key as it could leak without its PEM armour: 24 characters of its base64 body every 8, taken within
 * each line and across them (line breaks dropped), so that any quoted piece of 32 characters or more contains one.
 */
export function privateKeyForms(pems: readonly string[]): string[] {
  const forms = new Set<string>();
  const windows = (text: string): void => {
    for (let i = 0; i + 24 <= text.length; i += 8) forms.add(text.slice(i, i + 24));
  };
  for (const pem of pems) {
    const lines = pem.split('\n').filter((line) => line.length > 0 && !line.startsWith('-----'));
    for (const line of lines) windows(line);
    windows(lines.join(''));
  }
  return [...forms];
}
