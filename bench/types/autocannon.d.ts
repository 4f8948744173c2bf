/** autocannon 8 ships no types; the bench only calls it through the narrow interface in tools/autocannon.ts. */
declare module 'autocannon' {
  const autocannon: unknown;
  export default autocannon;
}
