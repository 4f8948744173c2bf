/** Throw-away PKI for the built-in demo tenant: a root CA, a TLS server certificate for the loopback names and a client certificate for the demo "Certificate" service key. */
import 'reflect-metadata';
import { randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import * as x509 from '@peculiar/x509';

type CryptoKeyPair = webcrypto.CryptoKeyPair;

/** SAP's `certificatedetails` object of a Certificate service key. */
export interface CertificateDetails {
  issuerdn: string;
  subjectdn: string;
  serialnumber: string;
  /** ISO 8601 timestamp of the certificate's `notAfter`. */
  validuntil: string;
}

/** A certificate and its private key, PEM encoded. */
export interface DemoKeyPair {
  /** The leaf alone. */
  cert: string;
  /** PKCS#8 (`-----BEGIN PRIVATE KEY-----`). */
  key: string;
}

export interface DemoPki {
  /** The demo root CA (self-signed): trust anchor for the server certificate and for client certificates. */
  ca: string;
  /** TLS server certificate for `localhost`, `127.0.0.1` and `::1`, issued by the CA. */
  server: DemoKeyPair;
  /** TLS client certificate (clientAuth) issued by the CA, with the chain and details a Certificate service key carries. */
  client: DemoKeyPair & {
    /** Leaf followed by the root, as SAP puts it into the `certificate` field. */
    chain: string;
    /** SHA-256 fingerprint in Node's `X509Certificate.fingerprint256` format (`AB:CD:…`). */
    fingerprint256: string;
    details: CertificateDetails;
  };
}

export interface DemoPkiOptions {
  /** Start of validity (minus one hour of clock-skew allowance); defaults to now. */
  now?: Date;
}

export const DEMO_CA_SUBJECT = 'CN=oauth-sidecar Demo Root CA, O=oauth-sidecar demo, C=DE';
export const DEMO_SERVER_SUBJECT = 'CN=localhost, O=oauth-sidecar demo, C=DE';
export const DEMO_CLIENT_SUBJECT = 'CN=demo-client, OU=it-rt-demo, O=oauth-sidecar demo, L=local, C=DE';
/** The names the demo servers answer on. */
export const DEMO_SERVER_NAMES = { dns: ['localhost'], ip: ['127.0.0.1', '::1'] } as const;

/** SAP lets certificate keys live 1–365 days; 365 also keeps the sidecar's "expires soon" warning quiet. */
const VALIDITY_DAYS = 365;
const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
const EC_P256: webcrypto.EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
const ECDSA_SHA256: webcrypto.EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };
/** RFC 5280 §4.1.2.2: positive, at most 20 octets. */
const SERIAL_BYTES = 16;

interface Authority {
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
}

/**
 * Generates the demo PKI: three EC P-256 key pairs, a few milliseconds. The
 * CA's private key never leaves this function, so nothing else can issue
 * certificates the demo tenant would trust.
 */
export async function createDemoPki(options: DemoPkiOptions = {}): Promise<DemoPki> {
  x509.cryptoProvider.set(webcrypto);
  const notBefore = new Date((options.now ?? new Date()).getTime() - HOUR_MS);
  const notAfter = new Date(notBefore.getTime() + HOUR_MS + VALIDITY_DAYS * DAY_MS);
  const [caKeys, serverKeys, clientKeys] = await Promise.all([generateEc(), generateEc(), generateEc()]);

  const caCert = await x509.X509CertificateGenerator.createSelfSigned({
    name: DEMO_CA_SUBJECT,
    keys: caKeys,
    serialNumber: serialNumber(),
    notBefore,
    // The root outlives its leaves by a day so that chain validity never hinges on rounding.
    notAfter: new Date(notAfter.getTime() + DAY_MS),
    signingAlgorithm: ECDSA_SHA256,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });
  const ca: Authority = { cert: caCert, keys: caKeys };

  const server = await issue(ca, serverKeys, DEMO_SERVER_SUBJECT, notBefore, notAfter, [
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
    new x509.SubjectAlternativeNameExtension([
      ...DEMO_SERVER_NAMES.dns.map((value) => ({ type: 'dns' as const, value })),
      ...DEMO_SERVER_NAMES.ip.map((value) => ({ type: 'ip' as const, value })),
    ]),
  ]);
  const client = await issue(ca, clientKeys, DEMO_CLIENT_SUBJECT, notBefore, notAfter, [
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
  ]);

  const caPem = pem(caCert);
  const clientPem = pem(client);
  return {
    ca: caPem,
    server: { cert: pem(server), key: await pkcs8(serverKeys) },
    client: {
      cert: clientPem,
      chain: clientPem + caPem,
      key: await pkcs8(clientKeys),
      fingerprint256: new X509Certificate(clientPem).fingerprint256,
      details: {
        issuerdn: DEMO_CA_SUBJECT,
        subjectdn: DEMO_CLIENT_SUBJECT,
        serialnumber: client.serialNumber,
        validuntil: client.notAfter.toISOString(),
      },
    },
  };
}

function generateEc(): Promise<CryptoKeyPair> {
  return webcrypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']) as Promise<CryptoKeyPair>;
}

async function issue(
  issuer: Authority,
  keys: CryptoKeyPair,
  subject: string,
  notBefore: Date,
  notAfter: Date,
  extensions: x509.Extension[],
): Promise<x509.X509Certificate> {
  return x509.X509CertificateGenerator.create({
      subject,
      issuer: issuer.cert.subject,
      publicKey: keys.publicKey,
      signingKey: issuer.keys.privateKey,
      serialNumber: serialNumber(),
      notBefore,
      notAfter,
      signingAlgorithm: ECDSA_SHA256,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        ...extensions,
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
        await x509.AuthorityKeyIdentifierExtension.create(issuer.keys.publicKey),
      ],
    });
}

/** A random positive serial number as hex (high bit cleared so DER needs no sign byte). */
function serialNumber(): string {
  const bytes = randomBytes(SERIAL_BYTES);
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return bytes.toString('hex');
}

function pem(cert: x509.X509Certificate): string {
  return `${cert.toString('pem')}\n`;
}

async function pkcs8(keys: CryptoKeyPair): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  return `${x509.PemConverter.encode(der, 'PRIVATE KEY')}\n`;
}
