/**
 * Typed client credentials, as loaded from an SAP BTP service key.
 *
 * A service key reaches the machine in many shapes (JSON file, Kubernetes
 * secret directory, servicebinding.io binding, VCAP_SERVICES, an env var);
 * whatever the shape, the rest of the sidecar sees one of these three kinds.
 * `loadCredentials` ties reading (`credential-source`) and validation (`service-key`) together.
 */

import { readClientCert, readCredentialSource, settleReads } from './credential-source.js';
import { parseServiceKey } from './service-key.js';

/** Where the service key is read from; resolved by `config` from flags and env. */
export type CredentialSource =
  /**
   * `--service-key PATH` / `SIDECAR_SERVICE_KEY`: a JSON file or a secret directory (of bindings: `binding` picks one).
   * `from` names where the path was given, for a message that it does not exist.
   */
  | { kind: 'path'; path: string; binding?: string; from?: string }
  /** servicebinding.io: `$SERVICE_BINDING_ROOT/<name>/` directories with a `type` file. */
  | { kind: 'binding-root'; root: string; binding?: string }
  /** Cloud Foundry: the `VCAP_SERVICES` JSON, binding `it-rt` or the one named. */
  | { kind: 'vcap'; json: string; binding?: string }
  /** Cloud Foundry with file-based service bindings: the file `VCAP_SERVICES_FILE_PATH` names (watched). */
  | { kind: 'vcap-file'; path: string; binding?: string }
  /** `SIDECAR_SERVICE_KEY_JSON`: the service key JSON itself. */
  | { kind: 'inline'; json: string; label: string };

/** Where the key pair of an External Certificate key comes from. */
export type ClientCertSource = (
  | { kind: 'files'; certFile: string; keyFile: string }
  /** A `kubernetes.io/tls` secret directory with `tls.crt` and `tls.key`. */
  | { kind: 'tls-dir'; dir: string }
) & {
  /** Where each path was given (`--client-cert` or `SIDECAR_CLIENT_CERT`, `routes[1].clientCert`…), for messages. */
  names?: { cert: string; key: string; dir: string };
};

export interface CredentialSpec {
  source: CredentialSource;
  clientCert?: ClientCertSource;
  /**
   * The route has no upstream of its own: the key must give `url`. Checked with the rest of the key, so that a
   * rotated key without it is refused like any broken key (named with its prefix, logged once) at load.
   */
  needsUrl?: boolean;
  /**
   * Where this route takes a client key pair, as a message names it (the flags and variables, or the route's
   * keys in its config file): an External Certificate key without one says where to give it.
   */
  pairSettings?: string;
}

interface CredentialsBase {
  /** `clientid`; SAP ids contain `!` and `|`. */
  clientId: string;
  /** `tokenurl`, already switched to the `authentication.cert.` host for mTLS keys. */
  tokenUrl: string;
  /** `url`: the integration-flow (runtime) or API host; absent in some non-CPI keys. */
  url: string | undefined;
  /** Human-readable origin, e.g. `/etc/secrets/key.json` or `VCAP_SERVICES (it-rt/my-instance)`. */
  source: string;
}

/** ClientId/Secret key: `client_secret_basic` or `client_secret_post` (RFC 6749 §2.3.1). */
export interface SecretCredentials extends CredentialsBase {
  kind: 'client-secret';
  clientSecret: string;
}

/**
 * Certificate key (SAP-generated) or External Certificate key plus its key pair:
 * mTLS at the token server (RFC 8705 §2), `client_id` in the body, no secret.
 */
export interface CertificateCredentials extends CredentialsBase {
  kind: 'certificate' | 'external-certificate';
  /** PEM chain, leaf first, normalised (real newlines, 64-column bodies). */
  certificate: string;
  /** PEM private key (PKCS#1, PKCS#8 or SEC1 EC), normalised. */
  key: string;
  /** SHA-256 fingerprint of the leaf, for cache keys and logs. */
  fingerprint: string;
  /** Leaf `notAfter`. */
  notAfter: Date;
}

export type Credentials = SecretCredentials | CertificateCredentials;

/** Something worth telling the operator at load time (expiring certificate, host switch…). */
export interface CredentialNotice {
  level: 'info' | 'warn';
  message: string;
}

export interface LoadedCredentials {
  credentials: Credentials;
  notices: CredentialNotice[];
}

/** A client certificate chain and its private key as read, before validation. */
export interface ClientKeyPair {
  /** PEM text as found (escapes and odd wrapping are repaired by `service-key`). */
  certificate: string;
  key: string;
  /** Where the pair came from, e.g. `/certs/tls.crt, /certs/tls.key` or a `kubernetes.io/tls` directory. */
  source: string;
  /** Each half's file and the setting that named it (`--client-cert`, `routes[1].clientTlsDir`), for messages. */
  certificateFrom?: { source: string; field: string };
  keyFrom?: { source: string; field: string };
}

export interface LoadCredentialsOptions {
  /** Clock for the certificate expiry checks. */
  now?: Date;
}

/** Reads the service key (and client key pair, if any) and validates them; throws one ConfigError for all problems. */
export async function loadCredentials(
  spec: CredentialSpec,
  opts: LoadCredentialsOptions = {},
): Promise<LoadedCredentials> {
  const [key, clientCert] = await settleReads(
    readCredentialSource(spec.source),
    spec.clientCert ? readClientCert(spec.clientCert) : Promise.resolve(undefined),
  );
  return parseServiceKey(key.raw, key.source, { now: opts.now, clientCert, needsUrl: spec.needsUrl, pairSettings: spec.pairSettings });
}
