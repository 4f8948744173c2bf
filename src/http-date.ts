/**
 * HTTP dates (RFC 9110 §5.6.7), and a response's `Date` as the clock its other dates are read against: a JWT's
 * `exp`, a `Retry-After` date, a cookie's `Expires`. The local calendar clock may be off by hours (a hardware
 * clock kept in local time, a VM resumed); the server's dates agree with its own `Date`.
 */

/**
 * A response's `Date` as epoch milliseconds, or undefined when absent or not a date: what the server's own dates
 * (a JWT's `exp`, a `Retry-After` date) are measured from, whatever the local calendar clock says.
 */
export function serverDate(value: string | string[] | undefined): number | undefined {
  const raw = Array.isArray(value) ? value[0] : value;
  if (raw === undefined || !/[a-z]/i.test(raw)) return undefined; // an HTTP-date names its weekday and month
  return parseHttpDate(raw);
}

/**
 * An HTTP-date as epoch milliseconds, or undefined. RFC 9110 §5.6.7: recipients accept the obsolete RFC 850 and
 * asctime forms too, and every HTTP-date is GMT; asctime's names no zone, which Date.parse would read in local time.
 */
export function parseHttpDate(raw: string): number | undefined {
  const text = /^[a-z]{3} [a-z]{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$/i.test(raw.trim()) ? `${raw.trim()} GMT` : raw;
  const date = Date.parse(text);
  return Number.isFinite(date) ? date : undefined;
}
