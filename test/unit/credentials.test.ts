import { X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadCredentials, type CertificateCredentials } from '../../src/credentials.js';
import { ConfigError } from '../../src/errors.js';
import { unitCerts } from '../helpers/unit-certs.js';

const certs = await unitCerts();
const DAY_MS = 86_400_000;
const FIXTURES = new URL('../fixtures/service-keys/', import.meta.url).pathname;
const CLIENT_ID = 'sb-fake-0000!b1|it-rt-acme-dev!b196';
const TOKEN_URL = 'https://acme-dev.authentication.eu10.hana.ondemand.com/oauth/token';
const CERT_TOKEN_URL = 'https://acme-dev.authentication.cert.eu10.hana.ondemand.com/oauth/token';

const created: string[] = [];
afterEach(async () => {
  await Promise.all(created.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

/** A secret directory with one file per entry, as btp-operator writes it. */
async function secretDir(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'credentials-'));
  created.push(dir);
  await mkdir(dir, { recursive: true });
  await Promise.all(Object.entries(files).map(([name, text]) => writeFile(join(dir, name), text)));
  return dir;
}

describe('loadCredentials', () => {
  it('loads a ClientId/Secret key file', async () => {
    const path = join(FIXTURES, 'client-secret.json');
    const loaded = await loadCredentials({ source: { kind: 'path', path } });
    expect(loaded.credentials).toMatchObject({ kind: 'client-secret', source: path, tokenUrl: TOKEN_URL });
    expect(loaded.notices).toEqual([]);
  });

  it('loads a Certificate key from a secret directory, switching to the mTLS host', async () => {
    const oauth = { clientid: CLIENT_ID, certificate: certs.chainPem, key: certs.leafKeyPkcs1, tokenurl: TOKEN_URL };
    const dir = await secretDir({ oauth: JSON.stringify(oauth), type: 'it-rt' });
    const loaded = await loadCredentials({ source: { kind: 'path', path: dir } });
    expect(loaded.credentials).toMatchObject({ kind: 'certificate', tokenUrl: CERT_TOKEN_URL, source: dir });
    expect(loaded.notices.map((n) => n.level)).toEqual(['info']);
  });

  it('loads an External Certificate key with the pair from a kubernetes.io/tls directory', async () => {
    const oauth = { clientid: CLIENT_ID, certificate: certs.leafPem, tokenurl: CERT_TOKEN_URL };
    const keyDir = await secretDir({ oauth: JSON.stringify(oauth) });
    const tlsDir = await secretDir({ 'tls.crt': certs.chainPem, 'tls.key': certs.leafKeyPkcs8 });
    const loaded = await loadCredentials({
      source: { kind: 'path', path: keyDir },
      clientCert: { kind: 'tls-dir', dir: tlsDir },
    });
    expect(loaded.credentials.kind).toBe('external-certificate');
    const leafFingerprint = new X509Certificate(certs.leafPem).fingerprint256;
    expect((loaded.credentials as CertificateCredentials).fingerprint).toBe(leafFingerprint);
  });

  it('loads --client-cert/--client-key files whose chain is root first without the intermediate', async () => {
    const oauth = { clientid: CLIENT_ID, certificate: certs.leafPem, tokenurl: CERT_TOKEN_URL };
    const keyDir = await secretDir({ oauth: JSON.stringify(oauth) });
    const rootThenLeaf = `${certs.rootPem}\n${certs.leafPem}`;
    const certDir = await secretDir({ 'client.crt': rootThenLeaf, 'client.key': certs.leafKeyPkcs1 });
    const loaded = await loadCredentials({
      source: { kind: 'path', path: keyDir },
      clientCert: { kind: 'files', certFile: join(certDir, 'client.crt'), keyFile: join(certDir, 'client.key') },
    });
    const credentials = loaded.credentials as CertificateCredentials;
    expect(credentials.fingerprint).toBe(new X509Certificate(certs.leafPem).fingerprint256);
    expect(credentials.certificate.startsWith(certs.leafPem.trim())).toBe(true);
    expect(loaded.notices).toEqual([]);
  });

  it('loads from VCAP_SERVICES', async () => {
    const oauth = { clientid: CLIENT_ID, clientsecret: 's', tokenurl: TOKEN_URL };
    const json = JSON.stringify({ 'it-rt': [{ name: 'cpi', credentials: { oauth } }] });
    const loaded = await loadCredentials({ source: { kind: 'vcap', json } });
    expect(loaded.credentials).toMatchObject({ clientId: CLIENT_ID, source: 'VCAP_SERVICES (it-rt/cpi)' });
  });

  it('reports a missing key file and a missing client certificate together', async () => {
    const dir = await secretDir({});
    const err = await loadCredentials({
      source: { kind: 'path', path: join(dir, 'key.json') },
      clientCert: { kind: 'files', certFile: join(dir, 'tls.crt'), keyFile: join(dir, 'tls.key') },
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems.map((p) => p.source)).toEqual([
      join(dir, 'key.json'),
      join(dir, 'tls.crt'),
      join(dir, 'tls.key'),
    ]);
  });

  it('passes the clock to the expiry check', async () => {
    const oauth = { clientid: CLIENT_ID, certificate: certs.leafPem, key: certs.leafKeyPkcs1, tokenurl: TOKEN_URL };
    const dir = await secretDir({ oauth: JSON.stringify(oauth) });
    const now = new Date(Date.now() + 400 * DAY_MS);
    const loading = loadCredentials({ source: { kind: 'path', path: dir } }, { now });
    await expect(loading).rejects.toThrow(/oauth\.certificate: expired on/);
  });
});
