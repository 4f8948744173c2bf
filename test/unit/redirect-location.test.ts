import { describe, expect, it } from 'vitest';
import { reachedHost, senderLocation as map, type LocationRoute } from '../../src/redirect-location.js';

const UP = 'https://tenant-rt.cfapps.eu10.hana.ondemand.com';

function route(prefix: string, options: { basePath?: string; rewritePrefix?: string } = {}): LocationRoute {
  return { name: 'r', origin: UP, basePath: options.basePath ?? '', prefix, config: { rewritePrefix: options.rewritePrefix } };
}

/** With a route table in which every path is the route's own. */
function senderLocation(location: string, r: LocationRoute, upstreamPath: string, host: string | undefined): string {
  return map(location, r, upstreamPath, host, () => r.name);
}

describe('senderLocation', () => {
  it('maps an absolute URL under the route back to the sidecar, with the sender’s Host', () => {
    const r = route('/orders', { rewritePrefix: '/http/orders' });
    expect(senderLocation(`${UP}/http/orders/43?x=1#top`, r, '/http/orders', 'localhost:8080')).toBe('http://localhost:8080/orders/43?x=1#top');
    expect(senderLocation(`${UP}/http/orders`, r, '/http/orders', 'localhost:8080')).toBe('http://localhost:8080/orders');
    // Default port and host case do not make it another origin.
    expect(senderLocation('https://TENANT-RT.cfapps.eu10.hana.ondemand.com:443/http/orders/1', r, '/http/orders', '127.0.0.1:8080')).toBe(
      'http://127.0.0.1:8080/orders/1',
    );
  });

  it('keeps a relative reference relative, resolved against the forwarded request', () => {
    const r = route('/api', { basePath: '/base', rewritePrefix: '/api/v1' });
    expect(senderLocation("/base/api/v1/IntegrationPackages('P1')", r, '/base/api/v1/IntegrationPackages', 'h:1')).toBe("/api/IntegrationPackages('P1')");
    expect(senderLocation('next?page=2', r, '/base/api/v1/items/list', 'h:1')).toBe('/api/items/next?page=2');
  });

  it('maps without a rewrite, with a base path, and for the root routes', () => {
    expect(senderLocation(`${UP}/http/a/b`, route('/http'), '/http/a', 'h')).toBe('http://h/http/a/b');
    expect(senderLocation(`${UP}/base/http/a`, route('/http', { basePath: '/base' }), '/base/http', 'h')).toBe('http://h/http/a');
    expect(senderLocation(`${UP}/anything`, route('/'), '/', 'h')).toBe('http://h/anything');
    expect(senderLocation(`${UP}/`, route('/'), '/', 'h')).toBe('http://h/');
    expect(senderLocation(`${UP}/42`, route('/orders', { rewritePrefix: '/' }), '/', 'h')).toBe('http://h/orders/42');
  });

  it('passes on what is not under the route: another host or scheme, another path, a login page, credentials in the URL', () => {
    const r = route('/orders', { rewritePrefix: '/http/orders' });
    for (const location of [
      'https://accounts.sap.com/saml2/idp/sso?SAMLRequest=abc',
      `http://tenant-rt.cfapps.eu10.hana.ondemand.com/http/orders/1`,
      `${UP}:8443/http/orders/1`,
      `${UP}/http/ordersX/1`,
      `${UP}/http/other`,
      `https://user:pw@tenant-rt.cfapps.eu10.hana.ondemand.com/http/orders/1`,
      'http://[::1', // not a URL
      'https:foo', // a scheme without `//`: the parser reads it as relative
      'https:/a//b',
    ]) {
      expect(senderLocation(location, r, '/http/orders', 'h')).toBe(location);
    }
    // A relative one outside the route becomes the upstream URL it stands for: resolved against the sidecar, it
    // would land on another of its paths (maybe another route's, with that route's token).
    expect(senderLocation('/http/other', r, '/http/orders', 'h')).toBe(`${UP}/http/other`);
    expect(senderLocation('../invoices/1', r, '/http/orders/x', 'h')).toBe(`${UP}/http/invoices/1`);
    // Dot segments: the sidecar would refuse the mapped path.
    expect(senderLocation(`${UP}/http/orders/a/../../admin`, r, '/http/orders', 'h')).toBe(`${UP}/http/orders/a/../../admin`);
    expect(senderLocation(`${UP}/http/orders/a%2F..%2F..%2Fadmin`, r, '/http/orders', 'h')).toBe(`${UP}/http/orders/a%2F..%2F..%2Fadmin`);
  });

  it('keeps the upstream’s bytes of path, query and fragment (the URL parser would re-encode quotes and braces)', () => {
    const r = route('/orders', { rewritePrefix: '/http/orders' });
    expect(senderLocation(`${UP}/http/orders/Orders('43')?$filter=Name%20eq%20'A'&x="y"#{z}`, r, '/http/orders', 'h')).toBe(
      `http://h/orders/Orders('43')?$filter=Name%20eq%20'A'&x="y"#{z}`,
    );
    expect(senderLocation(`${UP}?x=1`, route('/'), '/', 'h')).toBe('http://h/?x=1');
    expect(senderLocation(`/http/orders/a{b}|c^d\`e`, r, '/http/orders', 'h')).toBe('/orders/a{b}|c^d`e');
  });

  it("keeps the reference's own query and fragment bytes for a path-relative one too (RFC 3986 §5.2.2)", () => {
    const r = route('/orders', { rewritePrefix: '/http/orders' });
    expect(senderLocation("list?$filter=Name%20eq%20'x'", r, '/http/orders/a/b', 'h')).toBe("/orders/a/list?$filter=Name%20eq%20'x'");
    expect(senderLocation('?x="q"', r, '/http/orders/a/b?old=1', 'h')).toBe('/orders/a/b?x="q"');
    expect(senderLocation('list#`x`', r, '/http/orders/a/b?old=1', 'h')).toBe('/orders/a/list#`x`');
    // A bare fragment keeps the request's query.
    expect(senderLocation('#{top}', r, "/http/orders/a/b?k='v'", 'h')).toBe("/orders/a/b?k=%27v%27#{top}");
  });

  it('leaves the base path itself unmapped on the root route: the sender’s `/` is another resource (`/base/`)', () => {
    const root = route('/', { basePath: '/http/app' });
    expect(senderLocation(`${UP}/http/app`, root, '/http/app/', 'h')).toBe(`${UP}/http/app`);
    expect(senderLocation('/http/app', root, '/http/app/', 'h')).toBe(`${UP}/http/app`);
    expect(senderLocation('/http/app?x=1', root, '/http/app/', 'h')).toBe(`${UP}/http/app?x=1`);
    expect(senderLocation(`${UP}/http/app/`, root, '/http/app/x', 'h')).toBe('http://h/');
    // On a route with a prefix of its own the base is that prefix: the same resource.
    expect(senderLocation(`${UP}/http/app`, route('/app', { basePath: '/http/app', rewritePrefix: '/' }), '/http/app/x', 'h')).toBe('http://h/app');
  });

  it('falls back to a relative reference when the Host cannot stand in a URL', () => {
    const r = route('/orders', { rewritePrefix: '/http/orders' });
    for (const host of [undefined, '', 'evil.example/path', 'a b', 'h:1:2', 'user@h', 'h:99999', '[:::]']) {
      expect(senderLocation(`${UP}/http/orders/1`, r, '/http/orders', host)).toBe('/orders/1');
    }
    expect(senderLocation(`${UP}/http/orders/1`, r, '/http/orders', '[::1]:8080')).toBe('http://[::1]:8080/orders/1');
  });

  it('leaves what the URL parser would re-encode as it came: UTF-8 read as latin1, inner whitespace', () => {
    const r = route('/orders', { rewritePrefix: '/http/orders' });
    // undici hands the bytes of "Müller" over as latin1: re-encoded, the sender would get "MÃ¼ller".
    const latin1 = Buffer.from(`${UP}/http/orders/Müller`, 'utf8').toString('latin1');
    expect(senderLocation(latin1, r, '/http/orders', 'h')).toBe(latin1);
    expect(senderLocation(`${UP}/http/orders/a b`, r, '/http/orders', 'h')).toBe(`${UP}/http/orders/a b`);
    expect(senderLocation(` ${UP}/http/orders/1 `, r, '/http/orders', 'h')).toBe('http://h/orders/1');
    // A path from the root needs no parser: mapped on its own bytes, or, outside the route, made the upstream URL
    // it stands for (against the sidecar's address it would mean another path, maybe another route's).
    const based = route('/orders', { basePath: '/base', rewritePrefix: '/http/orders' });
    expect(senderLocation('/base/http/orders/Order 43', based, '/base/http/orders', 'h')).toBe('/orders/Order 43');
    const latin1Path = Buffer.from('/base/http/orders/Müller?q=ä', 'utf8').toString('latin1');
    expect(senderLocation(latin1Path, based, '/base/http/orders', 'h')).toBe(latin1Path.replace('/base/http', ''));
    expect(senderLocation('/base/http/other/a b', based, '/base/http/orders', 'h')).toBe(`${UP}/base/http/other/a b`);
    expect(senderLocation('/base/http/orders/../x y', based, '/base/http/orders', 'h')).toBe(`${UP}/base/http/orders/../x y`);
    // Relative to the request's path, or naming a host: as it came.
    expect(senderLocation('Order 43', based, '/base/http/orders/', 'h')).toBe('Order 43');
    expect(senderLocation('//other.example/a b', based, '/base/http/orders/', 'h')).toBe('//other.example/a b');
  });

  it('never makes a reference to another host out of a path on the upstream (`//host/…`)', () => {
    const root = route('/', { rewritePrefix: '/http' });
    for (const [location, passed] of [
      ['/http//evil.example/x/', `${UP}/http//evil.example/x/`],
      [`${UP}/http//evil.example/x/`, `${UP}/http//evil.example/x/`],
      ['/http/\\evil.example/x', `${UP}/http//evil.example/x`],
      // URL parsers drop TAB, CR and LF before parsing: `/<TAB>/evil.example` would name that host.
      ['/http/\t/evil.example/x', `${UP}/http/\t/evil.example/x`],
      ['/http/\r\n\t/evil.example/x', `${UP}/http/\r\n\t/evil.example/x`],
    ]) {
      expect(senderLocation(location!, root, '/http/docs', undefined)).toBe(passed);
      expect(senderLocation(location!, root, '/http/docs', 'h')).toBe(passed);
    }
    expect(senderLocation(`${UP}//evil.example/x`, route('/'), '/', undefined)).toBe(`${UP}//evil.example/x`);
  });

  it('leaves a Location with a back slash in its authority as it came: the URL parser ends the authority there', () => {
    const root = route('/');
    const host = UP.slice('https://'.length);
    for (const location of [`https://${host}\\http\\orders\\1`, `https://${host}\\@evil.example/http/x`, `https://${host}\\..\\admin`]) {
      expect(senderLocation(location, root, '/http/x', 'h')).toBe(location);
    }
  });

  it('leaves a path that the sidecar would route elsewhere (a longer prefix of another route) as it came', () => {
    const orders = route('/orders', { rewritePrefix: '/http' });
    const table = (path: string) => (path === '/orders/special' || path.startsWith('/orders/special/') ? 'special' : 'r');
    expect(map(`${UP}/http/special/1`, orders, '/http/x', 'h', table)).toBe(`${UP}/http/special/1`);
    expect(map(`${UP}/http/normal/1`, orders, '/http/x', 'h', table)).toBe('http://h/orders/normal/1');
  });

  it('names the address a sender without Host reached', () => {
    expect(reachedHost('127.0.0.1', 8080)).toBe('127.0.0.1:8080');
    expect(reachedHost('::1', 8080)).toBe('[::1]:8080');
    // An IPv4 sender on a `[::]` listener: node shows the address it reached mapped; the sender knows it as IPv4.
    expect(reachedHost('::ffff:127.0.0.1', 8080)).toBe('127.0.0.1:8080');
    expect(reachedHost(undefined, undefined)).toBeUndefined();
  });
});
