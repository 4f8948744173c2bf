import { createHash, timingSafeEqual } from 'node:crypto';
import { describe, expect, it, vi } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import {
  BASIC_AUTH_CHALLENGE,
  checkBasicAuth,
  createInboundControl,
  boundExposureProblems,
  exposureProblems,
  isLoopbackHost,
  parseAllowlist,
  parseBasicAuthFile,
  parseBasicCredentials,
  type BasicAuthVerifier,
  type InboundDecision,
} from '../../src/inbound-control.js';

// Count timingSafeEqual calls without changing what it does.
vi.mock('node:crypto', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:crypto')>();
  return { ...actual, timingSafeEqual: vi.fn(actual.timingSafeEqual) };
});

const SOURCE = '/etc/oauth-sidecar/users';
const hex = (s: string | Buffer): string => createHash('sha256').update(s).digest('hex');
const basic = (userPass: string | Buffer, scheme = 'Basic'): string =>
  `${scheme} ${(typeof userPass === 'string' ? Buffer.from(userPass, 'utf8') : userPass).toString('base64')}`;

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

const USERS_FILE = [
  '# legacy senders',
  '',
  'alice:wonderland',
  '  bob:pa:ss:word  ',
  '\t# indented comment',
  `carol:sha256:${hex('hashed secret')}`,
  `dave:sha256:${hex('Dave').toUpperCase()}`,
  'erin:p\u00e4ssw\u00f6rd',
  'frank:with inner spaces',
  'crlf:windows\r',
  '',
].join('\n');

describe('parseBasicAuthFile', () => {
  const verifier = parseBasicAuthFile(USERS_FILE, SOURCE);

  it('reads plaintext and sha256 entries, skipping comments and blank lines', () => {
    expect(verifier.source).toBe(SOURCE);
    expect(verifier.userCount).toBe(7);
    expect(Object.isFrozen(verifier)).toBe(true);
  });

  it.each([
    ['alice', 'wonderland'],
    ['bob', 'pa:ss:word'],
    ['carol', 'hashed secret'],
    ['dave', 'Dave'],
    ['erin', 'p\u00e4ssw\u00f6rd'],
    ['frank', 'with inner spaces'],
    ['crlf', 'windows'],
  ])('verifies %s', (user, password) => {
    expect(verifier.verify(user, Buffer.from(password, 'utf8'))).toBe(true);
    expect(verifier.verify(user, Buffer.from(`${password}x`, 'utf8'))).toBe(false);
  });

  it('ignores a byte order mark (Windows editors write one): the first line is neither a wrong user nor a live comment', () => {
    const first = parseBasicAuthFile('\uFEFFerp:secret\n', SOURCE);
    expect(first.verify('erp', Buffer.from('secret'))).toBe(true);
    const comment = parseBasicAuthFile('\uFEFF# format: user:password\nerp:secret\n', SOURCE);
    expect(comment.userCount).toBe(1);
    expect(comment.verify('\uFEFF# format', Buffer.from('user:password'))).toBe(false);
  });

  it('does not treat the sha256 line as a plaintext password', () => {
    expect(verifier.verify('carol', Buffer.from(`sha256:${hex('hashed secret')}`))).toBe(false);
  });

  it('refuses an unknown user even with a known password', () => {
    expect(verifier.verify('mallory', Buffer.from('wonderland'))).toBe(false);
  });

  it('lists every malformed line, never echoing its content', () => {
    const secrets = ['nocolonsecret', 'orphan-secret', 'short', 'g'.repeat(64), 'ctl\u0007secret', 'second-secret'];
    const text = [
      'ok:fine',
      secrets[0],
      `:${secrets[1]}`,
      'empty:',
      `shorthash:sha256:${secrets[2]}`,
      `nothex:sha256:${secrets[3]}`,
      `ctl:${secrets[4]}`,
      `ok:${secrets[5]}`,
      'ok2:fine',
    ].join('\n');
    const err = configError(() => parseBasicAuthFile(text, SOURCE));
    expect(err.code).toBe('CONFIG_INVALID');
    expect(err.problems).toEqual([
      { source: SOURCE, field: 'line 2', message: 'expected user:password or user:sha256:<hex>' },
      { source: SOURCE, field: 'line 3', message: 'empty user name' },
      { source: SOURCE, field: 'line 4', message: 'empty password' },
      { source: SOURCE, field: 'line 5', message: 'sha256 digest must be 64 hex digits' },
      { source: SOURCE, field: 'line 6', message: 'sha256 digest must be 64 hex digits' },
      { source: SOURCE, field: 'line 7', message: 'contains a control character' },
      { source: SOURCE, field: 'line 8', message: 'duplicate user (first defined on line 1)' },
    ]);
    for (const secret of secrets) expect(err.message).not.toContain(secret);
  });

  it('refuses the sha256 digest of an empty password (`printf %s "$PW" | sha256sum` with $PW unset), in any case', () => {
    const empty = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
    for (const hex of [empty, empty.toUpperCase()]) {
      expect(configError(() => parseBasicAuthFile(`ok:fine\nsender:sha256:${hex}\n`, SOURCE)).problems).toEqual([
        { source: SOURCE, field: 'line 2', message: 'empty password (the sha256 digest of an empty string)' },
      ]);
    }
  });

  it.each([
    ['an empty file', ''],
    ['only comments', '# nobody\n\n   \n'],
  ])('refuses %s', (_name, text) => {
    const err = configError(() => parseBasicAuthFile(text, SOURCE));
    expect(err.problems).toEqual([{ source: SOURCE, field: '', message: 'no users defined; every request would be refused' }]);
  });
});

describe('parseBasicCredentials', () => {
  it('splits at the first colon (RFC 7617 §2), keeping colons in the password', () => {
    const parsed = parseBasicCredentials(basic('user:pa:ss:'));
    expect(parsed?.user).toBe('user');
    expect(parsed?.password.toString('latin1')).toBe('pa:ss:');
  });

  it('keeps the password as raw bytes and decodes the user as UTF-8', () => {
    const parsed = parseBasicCredentials(basic(Buffer.concat([Buffer.from('j\u00fcrgen:', 'utf8'), Buffer.from([0xe9, 0x00, 0xff])])));
    expect(parsed?.user).toBe('j\u00fcrgen');
    expect(parsed?.password).toEqual(Buffer.from([0xe9, 0x00, 0xff]));
  });

  it.each([
    ['absent', undefined],
    ['empty', ''],
    ['scheme only', 'Basic'],
    ['scheme and space only', 'Basic '],
    ['no space after scheme', `Basic${Buffer.from('a:b').toString('base64')}`],
    ['another scheme', `Bearer ${Buffer.from('a:b').toString('base64')}`],
    ['a longer scheme', `Basically ${Buffer.from('a:b').toString('base64')}`],
    ['not base64', 'Basic a:b'],
    ['base64 with junk', `Basic ${Buffer.from('a:b').toString('base64')}!`],
    ['too much padding', 'Basic YTpi==='],
    ['padding inside', 'Basic YT=pi'],
    ['impossible length', 'Basic YTpiY'],
    ['no colon', basic('justauser')],
  ])('returns undefined when %s', (_name, header) => {
    expect(parseBasicCredentials(header)).toBeUndefined();
  });

  it.each([
    ['lower-case scheme', basic('a:b', 'basic')],
    ['mixed-case scheme', basic('a:b', 'bAsIc')],
    ['several spaces', `Basic    ${Buffer.from('a:b').toString('base64')}`],
    ['trailing white space', `${basic('a:b')} \t`],
    ['no padding', `Basic ${Buffer.from('a:b').toString('base64').replace(/=+$/, '')}`],
  ])('accepts %s', (_name, header) => {
    const parsed = parseBasicCredentials(header);
    expect(parsed?.user).toBe('a');
    expect(parsed?.password.toString()).toBe('b');
  });
});

describe('checkBasicAuth', () => {
  const verifier = parseBasicAuthFile(USERS_FILE, SOURCE);

  it.each([
    ['alice:wonderland'],
    ['bob:pa:ss:word'],
    ['carol:hashed secret'],
    ['erin:p\u00e4ssw\u00f6rd'],
  ])('accepts %s', (userPass) => {
    expect(checkBasicAuth(verifier, basic(userPass))).toBe(true);
  });

  it.each([
    ['a wrong password', basic('alice:wonderlan')],
    ['an empty password', basic('alice:')],
    ['an unknown user', basic('mallory:wonderland')],
    ['a user with different case', basic('Alice:wonderland')],
    ['a password cut at the second colon', basic('bob:pa')],
    ['another scheme', basic('alice:wonderland', 'Bearer')],
    ['no header', undefined],
    ['latin1 bytes for a UTF-8 password', basic(Buffer.from('erin:p\u00e4ssw\u00f6rd', 'latin1'))],
  ])('refuses %s', (_name, header) => {
    expect(checkBasicAuth(verifier, header)).toBe(false);
  });

  it('compares SHA-256 digests with timingSafeEqual, also for unknown users', () => {
    const spy = vi.mocked(timingSafeEqual);
    for (const header of [basic('alice:wonderland'), basic('alice:wrong'), basic('mallory:wonderland'), basic('bob:x')]) {
      spy.mockClear();
      checkBasicAuth(verifier, header);
      expect(spy).toHaveBeenCalledTimes(1);
      const [a, b] = spy.mock.calls[0]!;
      expect(a.byteLength).toBe(32);
      expect(b.byteLength).toBe(32);
    }
  });

  it('accepts any verifier implementation', () => {
    const fake: BasicAuthVerifier = { source: 'test', userCount: 1, verify: (u, p) => u === 'x' && Buffer.from(p).toString() === 'y' };
    expect(checkBasicAuth(fake, basic('x:y'))).toBe(true);
    expect(checkBasicAuth(fake, basic('x:z'))).toBe(false);
  });
});

describe('parseAllowlist / allows', () => {
  const list = parseAllowlist(['10.0.0.0/8', ' 192.0.2.7 ', '2001:db8::/32', '::1', '172.16.0.0/12', '198.51.100.0/32'], 'ALLOWLIST');

  it('keeps the trimmed entries', () => {
    expect(list.entries).toEqual(['10.0.0.0/8', '192.0.2.7', '2001:db8::/32', '::1', '172.16.0.0/12', '198.51.100.0/32']);
  });

  it.each([
    ['10.1.2.3', true],
    ['10.255.255.255', true],
    ['11.0.0.0', false],
    ['192.0.2.7', true],
    ['192.0.2.8', false],
    ['172.31.255.255', true],
    ['172.32.0.0', false],
    ['198.51.100.0', true],
    ['198.51.100.1', false],
    ['2001:db8::1', true],
    ['2001:db8:ffff:ffff:ffff:ffff:ffff:ffff', true],
    ['2001:db9::1', false],
    ['::1', true],
    ['::2', false],
    ['127.0.0.1', false],
    // IPv4-mapped IPv6 from a dual-stack (`::`) socket
    ['::ffff:10.1.2.3', true],
    ['::FFFF:10.1.2.3', true],
    ['::ffff:192.0.2.7', true],
    ['::ffff:192.0.2.8', false],
    ['::ffff:11.0.0.1', false],
    ['', false],
    [undefined, false],
    ['not-an-address', false],
  ])('%s → %s', (address, expected) => {
    expect(list.allows(address)).toBe(expected);
  });

  it('supports /0 for "everyone of this family"', () => {
    const v4 = parseAllowlist(['0.0.0.0/0'], 'x');
    expect(v4.allows('203.0.113.9')).toBe(true);
    expect(v4.allows('::ffff:203.0.113.9')).toBe(true);
    expect(v4.allows('2001:db8::1')).toBe(false);
    expect(parseAllowlist(['::/0'], 'x').allows('2001:db8::1')).toBe(true);
  });

  it('names every invalid entry in one ConfigError', () => {
    const entries = [
      '10.0.0.0/8',
      'nope',
      '10.0.0.0/33',
      '10.0.0.0/-1',
      '10.0.0.0/',
      '10.0.0.0/8/8',
      '2001:db8::/129',
      '10.1.2.3/8',
      '2001:db8::1/32',
      'fe80::1%eth0',
      '',
      '10.0.0.0/ 8',
      '256.0.0.0/8',
      '10.0.0.0/1e1',
    ];
    const err = configError(() => parseAllowlist(entries, 'config.yaml', 'inbound.allowlist'));
    expect(err.problems).toEqual([
      { source: 'config.yaml', field: 'inbound.allowlist[1]', message: '"nope": not an IPv4 or IPv6 address or CIDR block' },
      { source: 'config.yaml', field: 'inbound.allowlist[2]', message: '"10.0.0.0/33": prefix length must be 0 to 32' },
      { source: 'config.yaml', field: 'inbound.allowlist[3]', message: '"10.0.0.0/-1": prefix length must be 0 to 32' },
      { source: 'config.yaml', field: 'inbound.allowlist[4]', message: '"10.0.0.0/": prefix length must be 0 to 32' },
      { source: 'config.yaml', field: 'inbound.allowlist[5]', message: '"10.0.0.0/8/8": prefix length must be 0 to 32' },
      { source: 'config.yaml', field: 'inbound.allowlist[6]', message: '"2001:db8::/129": prefix length must be 0 to 128' },
      { source: 'config.yaml', field: 'inbound.allowlist[7]', message: '"10.1.2.3/8": host bits are set; the block is 10.0.0.0/8' },
      {
        source: 'config.yaml',
        field: 'inbound.allowlist[8]',
        message: '"2001:db8::1/32": host bits are set; the block is 2001:db8:0:0:0:0:0:0/32',
      },
      { source: 'config.yaml', field: 'inbound.allowlist[9]', message: '"fe80::1%eth0": zone indexes are not supported' },
      { source: 'config.yaml', field: 'inbound.allowlist[10]', message: '"": not an IPv4 or IPv6 address or CIDR block' },
      { source: 'config.yaml', field: 'inbound.allowlist[11]', message: '"10.0.0.0/ 8": prefix length must be 0 to 32' },
      { source: 'config.yaml', field: 'inbound.allowlist[12]', message: '"256.0.0.0/8": not an IPv4 or IPv6 address or CIDR block' },
      { source: 'config.yaml', field: 'inbound.allowlist[13]', message: '"10.0.0.0/1e1": prefix length must be 0 to 32' },
    ]);
    expect(err.message).toContain('inbound.allowlist[7]: "10.1.2.3/8"');
  });

  it('refuses an empty list', () => {
    const err = configError(() => parseAllowlist([], 'ENV'));
    expect(err.problems).toEqual([{ source: 'ENV', field: 'allowlist', message: 'is empty; every sender would be refused (remove it or list addresses)' }]);
  });

  it('accepts host-bit-free IPv6 blocks with an embedded IPv4 tail', () => {
    const mapped = parseAllowlist(['::ffff:10.0.0.0/104'], 'x');
    expect(mapped.allows('::ffff:10.9.9.9')).toBe(true);
    expect(mapped.allows('::ffff:11.0.0.1')).toBe(false);
  });
});

describe('isLoopbackHost', () => {
  it.each(['127.0.0.1', '127.1.2.3', '127.255.255.254', '::1', '[::1]', '0:0:0:0:0:0:0:1', '0000::0001', 'localhost', 'LocalHost', ' localhost ', '::ffff:127.0.0.1', '::ffff:7f00:1'])(
    '%s is loopback',
    (host) => {
      expect(isLoopbackHost(host)).toBe(true);
    },
  );

  // `localhost.`: glibc looks a name with a trailing dot up in DNS, not in /etc/hosts, whatever the server says.
  it.each(['localhost.', '0.0.0.0', '::', '[::]', '', '10.0.0.1', '192.168.1.1', '128.0.0.1', '126.255.255.255', '::2', '1::1', '::ffff:10.0.0.1', '::ffff:0.0.0.0', 'fe80::1%lo', 'example.com', 'localhost.example.com', 'my-localhost', '127.0.0.1.nip.io'])(
    '%s is not loopback',
    (host) => {
      expect(isLoopbackHost(host)).toBe(false);
    },
  );
});

describe('createInboundControl', () => {
  const basicAuth = parseBasicAuthFile('alice:wonderland\n', SOURCE);
  const allowlist = parseAllowlist(['10.0.0.0/8'], 'ALLOWLIST');
  const good = basic('alice:wonderland');
  const bad = basic('alice:nope');

  type Case = [string | undefined, string | undefined, InboundDecision];

  it.each<Case>([
    ['127.0.0.1', undefined, 'ok'],
    ['127.9.9.9', bad, 'ok'],
    ['::1', undefined, 'ok'],
    ['::ffff:127.0.0.1', undefined, 'ok'],
    ['10.1.2.3', undefined, 'forbidden'],
    ['::ffff:10.1.2.3', undefined, 'forbidden'],
    [undefined, undefined, 'forbidden'],
  ])('with nothing configured, loopback only: %s', (address, auth, decision) => {
    const control = createInboundControl({});
    expect(control.summary).toBe('loopback senders only');
    expect(control.check(address, auth)).toBe(decision);
  });

  it.each<Case>([
    ['203.0.113.9', undefined, 'ok'],
    ['127.0.0.1', undefined, 'ok'],
    [undefined, undefined, 'ok'],
  ])('with allowAnySender: %s', (address, auth, decision) => {
    const control = createInboundControl({ allowAnySender: true });
    expect(control.summary).toBe('any sender');
    expect(control.check(address, auth)).toBe(decision);
  });

  it.each<Case>([
    ['10.1.2.3', undefined, 'ok'],
    ['::ffff:10.1.2.3', undefined, 'ok'],
    ['127.0.0.1', undefined, 'forbidden'],
    ['192.0.2.1', good, 'forbidden'],
  ])('with an allowlist: %s', (address, auth, decision) => {
    const control = createInboundControl({ allowlist });
    expect(control.summary).toBe('allowlist (1 entries)');
    expect(control.check(address, auth)).toBe(decision);
  });

  it.each<Case>([
    ['203.0.113.9', good, 'ok'],
    ['127.0.0.1', good, 'ok'],
    ['203.0.113.9', bad, 'unauthorized'],
    ['203.0.113.9', undefined, 'unauthorized'],
    ['127.0.0.1', undefined, 'unauthorized'],
    ['203.0.113.9', `Bearer ${Buffer.from('alice:wonderland').toString('base64')}`, 'unauthorized'],
  ])('with basic auth (any sender): %s', (address, auth, decision) => {
    const control = createInboundControl({ basicAuth });
    expect(control.summary).toBe('any sender + basic auth (1 users)');
    expect(control.check(address, auth)).toBe(decision);
  });

  it.each<Case>([
    ['10.1.2.3', good, 'ok'],
    ['10.1.2.3', bad, 'unauthorized'],
    ['10.1.2.3', undefined, 'unauthorized'],
    ['192.0.2.1', good, 'forbidden'],
    ['192.0.2.1', bad, 'forbidden'],
  ])('with both, both must pass: %s', (address, auth, decision) => {
    const control = createInboundControl({ basicAuth, allowlist });
    expect(control.summary).toBe('allowlist (1 entries) + basic auth (1 users)');
    expect(control.check(address, auth)).toBe(decision);
  });

  it('refuses allowAnySender together with an allowlist', () => {
    const err = configError(() => createInboundControl({ allowlist, allowAnySender: true }, 'config.yaml'));
    expect(err.problems).toEqual([{ source: 'config.yaml', field: 'allowAnySender', message: 'cannot be combined with an allowlist' }]);
  });

  describe('webPageRefusal: a web page in a browser must not send through the sidecar', () => {
    it.each([
      [{ origin: 'https://attacker.example' }, /Origin/],
      [{ origin: 'null' }, /Origin/],
      [{ 'sec-fetch-site': 'cross-site' }, /Sec-Fetch-Site/],
      [{ 'sec-fetch-site': 'same-site' }, /Sec-Fetch-Site/],
      [{ 'sec-fetch-site': 'same-origin' }, /Sec-Fetch-Site/],
    ])('refuses a browser request (%o) whatever the sender rule', (headers, reason) => {
      for (const control of [createInboundControl({}), createInboundControl({ allowAnySender: true }), createInboundControl({ basicAuth }), createInboundControl({ allowlist })]) {
        expect(control.webPageRefusal({ host: '127.0.0.1:8080', ...headers })).toMatch(reason);
      }
    });

    it.each([
      ['127.0.0.1:8080', true],
      ['127.0.0.1', true],
      ['[::1]:8080', true],
      ['127.8.9.10:8080', true],
      ['localhost:8080', true],
      ['LOCALHOST.:8080', true],
      ['erp.localhost:8080', true],
      [undefined, true], // HTTP/1.0 senders may send no Host; browsers always do
      ['', true], // allowed empty (RFC 9112 §3.2)
      ['::1', true], // unbracketed: invalid, but an address all the same
      // Not loopback: no browser sends Fetch Metadata there (not "potentially trustworthy"), and Linux routes
      // 0.0.0.0 to this machine; a loopback listener is reached by no other address anyway.
      ['0.0.0.0:8080', false],
      ['[::]:8080', false],
      // IPv4-mapped loopback reaches a 127.0.0.1 listener, but browsers send it no Fetch Metadata either.
      ['[::ffff:127.0.0.1]:8080', false],
      ['[::ffff:7f00:1]', false],
      ['::ffff:127.0.0.1', false],
      ['10.1.2.3:8080', false],
      ['10.1.2.3', false],
      ['2001:db8::1', false],
      ['rebind.attacker.example:8080', false],
      ['localhost.attacker.example', false],
      ['attackerlocalhost:8080', false], // ends in "localhost", but is no subdomain of it
      ['erp-sidecar:8080', false],
    ])('loopback only: Host %s is accepted: %s (a re-pointed name is DNS rebinding)', (host, accepted) => {
      const control = createInboundControl({});
      // twice: the second answer comes from the remembered verdict
      for (let i = 0; i < 2; i++) {
        if (accepted) expect(control.webPageRefusal({ host })).toBeUndefined();
        else expect(control.webPageRefusal({ host })).toMatch(/^Host is not a loopback address, .*refused as a web page/);
      }
    });

    it('loopback only: an --allow-host name is accepted, in any case, with any port; so is an address given there', () => {
      const control = createInboundControl({ allowHosts: ['erp-sidecar', '10.1.2.3', '2001:db8::1'] });
      expect(control.webPageRefusal({ host: 'ERP-Sidecar:8080' })).toBeUndefined();
      // e.g. senders an iptables redirect brings from that address
      expect(control.webPageRefusal({ host: '10.1.2.3:8080' })).toBeUndefined();
      expect(control.webPageRefusal({ host: '[2001:db8::1]:8080' })).toBeUndefined();
      expect(control.webPageRefusal({ host: '2001:db8::1' })).toBeUndefined();
      // any spelling of the same IPv6 address
      expect(control.webPageRefusal({ host: '[2001:DB8:0::0001]:8080' })).toBeUndefined();
      expect(control.webPageRefusal({ host: '2001:db8:0:0::1' })).toBeUndefined();
      expect(control.webPageRefusal({ host: '[2001:db8::2]:8080' })).toMatch(/refused as a web page/);
      expect(control.webPageRefusal({ host: '10.1.2.4:8080' })).toMatch(/refused as a web page/);
      expect(control.webPageRefusal({ host: 'other:8080' })).toMatch(/refused as a web page/);
    });

    it('other sender rules do not check Host (senders reach them by any name), and a person typing the address is fine', () => {
      for (const control of [createInboundControl({ allowAnySender: true }), createInboundControl({ basicAuth }), createInboundControl({ allowlist })]) {
        expect(control.webPageRefusal({ host: 'oauth-sidecar.erp.svc:8080' })).toBeUndefined();
      }
      expect(createInboundControl({}).webPageRefusal({ host: 'localhost:8080', 'sec-fetch-site': 'none' })).toBeUndefined();
    });
  });

  it('exports the 401 challenge (RFC 7617 §2.1)', () => {
    expect(BASIC_AUTH_CHALLENGE).toBe('Basic realm="oauth-sidecar", charset="UTF-8"');
  });
});

describe('exposureProblems', () => {
  const basicAuth = parseBasicAuthFile('alice:wonderland\n', SOURCE);
  const allowlist = parseAllowlist(['10.0.0.0/8'], 'ALLOWLIST');

  it('allows an unprotected loopback listener', () => {
    expect(exposureProblems('127.0.0.1', {}, 'cfg')).toEqual([]);
    expect(exposureProblems('localhost', {}, 'cfg')).toEqual([]);
  });

  it.each(['0.0.0.0', '::', '10.0.0.5'])('refuses an unprotected listener on %s', (host) => {
    expect(exposureProblems(host, {}, 'cfg', 'server.host')).toEqual([
      {
        source: 'cfg',
        field: 'server.host',
        message:
          `${JSON.stringify(host)} is not a loopback address: choose inbound control with --basic-auth-file (SIDECAR_BASIC_AUTH_FILE), ` +
          '--allow-cidr (SIDECAR_ALLOW_CIDRS) or --allow-any-sender (SIDECAR_ALLOW_ANY_SENDER=true)',
      },
    ]);
  });

  it('names the settings a user can set: flags and variables, and the file keys when a config file is in use', () => {
    const [flags] = exposureProblems('0.0.0.0', {}, 'SIDECAR_LISTEN');
    for (const name of ['--basic-auth-file', 'SIDECAR_BASIC_AUTH_FILE', '--allow-cidr', 'SIDECAR_ALLOW_CIDRS', '--allow-any-sender', 'SIDECAR_ALLOW_ANY_SENDER']) {
      expect(flags?.message).toContain(name);
    }
    expect(flags?.message).not.toMatch(/inbound\./);
    const [file] = exposureProblems('0.0.0.0', {}, '/etc/oauth-sidecar/routes.yaml', 'listen', { configFile: true });
    expect(file?.message).toMatch(/--allow-any-sender \(SIDECAR_ALLOW_ANY_SENDER=true\), or inbound\.basicAuthFile, inbound\.allowCidrs or inbound\.allowAnySender in the config file$/);
  });

  it('accepts a non-loopback listener protected by any one of them', () => {
    expect(exposureProblems('0.0.0.0', { basicAuth }, 'cfg')).toEqual([]);
    expect(exposureProblems('0.0.0.0', { allowlist }, 'cfg')).toEqual([]);
    expect(exposureProblems('0.0.0.0', { allowAnySender: true }, 'cfg')).toEqual([]);
    expect(exposureProblems('0.0.0.0', { allowAnySender: false }, 'cfg')).toHaveLength(1);
  });
});

describe('boundExposureProblems: where the listen host led is what counts', () => {
  it('refuses a loopback name bound to another address without inbound control, naming both', () => {
    expect(boundExposureProblems('localhost', '0.0.0.0', {}, '--listen / SIDECAR_LISTEN')).toEqual([
      {
        source: '--listen / SIDECAR_LISTEN',
        field: 'listen',
        message:
          '"localhost" was bound to 0.0.0.0, which is not a loopback address: choose inbound control with --basic-auth-file (SIDECAR_BASIC_AUTH_FILE), ' +
          '--allow-cidr (SIDECAR_ALLOW_CIDRS) or --allow-any-sender (SIDECAR_ALLOW_ANY_SENDER=true)',
      },
    ]);
  });

  it('accepts a loopback binding, and any binding with inbound control', () => {
    expect(boundExposureProblems('localhost', '127.0.0.1', {}, 'x')).toEqual([]);
    expect(boundExposureProblems('localhost', '::1', {}, 'x')).toEqual([]);
    expect(boundExposureProblems('localhost', '10.0.0.5', { allowAnySender: true }, 'x')).toEqual([]);
  });
});
