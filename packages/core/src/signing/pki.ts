/*
 * A small X.509 certificate authority for development, tests and the control plane (device certificates
 * from CSRs reuse `issueCertificate`). Certificates are built with @peculiar/asn1-x509 (ASN.1 structures
 * only) and signed with Node's crypto. Nothing here writes files; everything returns PEM text.
 */
import { createHash, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import {
  AlgorithmIdentifier,
  AttributeTypeAndValue,
  AttributeValue,
  AuthorityKeyIdentifier,
  BasicConstraints,
  Certificate,
  ExtendedKeyUsage,
  Extension,
  Extensions,
  GeneralName,
  KeyIdentifier,
  KeyUsage,
  KeyUsageFlags,
  Name,
  RelativeDistinguishedName,
  SubjectAlternativeName,
  SubjectKeyIdentifier,
  SubjectPublicKeyInfo,
  TBSCertificate,
  Validity,
  Version,
  id_kp_clientAuth,
  id_kp_codeSigning,
  id_kp_emailProtection,
  id_kp_serverAuth,
  id_kp_timeStamping,
} from '@peculiar/asn1-x509';
import { z } from 'zod';
import { EXTENSION, parseCertificatePem } from './certificates.js';
import { loadSigningKey, loadVerificationKey, signBytes } from './keys.js';

/** Key types this CA generates. */
export type KeyType = 'ecdsa-p256' | 'ed25519';

export interface KeyPairPem {
  privateKeyPem: string;
  publicKeyPem: string;
}

/** A certificate with its key pair: a CA that can issue, or a leaf that can sign. */
export interface CertifiedKeyPair extends KeyPairPem {
  certificatePem: string;
}

/** An issuer: its certificate and private key. */
export type CertificateAuthority = CertifiedKeyPair;

export function generateKeyPair(type: KeyType): KeyPairPem {
  const pair =
    type === 'ed25519' ? generateKeyPairSync('ed25519') : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return {
    privateKeyPem: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
    publicKeyPem: pair.publicKey.export({ type: 'spki', format: 'pem' }) as string,
  };
}

const DistinguishedNameSchema = z.strictObject({
  commonName: z.string().min(1).max(64),
  organization: z.string().min(1).max(64).optional(),
  organizationalUnit: z.string().min(1).max(64).optional(),
  country: z
    .string()
    .regex(/^[A-Z]{2}$/, 'expected a two-letter ISO 3166 country code')
    .optional(),
});
export type DistinguishedName = z.infer<typeof DistinguishedNameSchema>;

const KEY_USAGES = [
  'digitalSignature',
  'nonRepudiation',
  'keyEncipherment',
  'dataEncipherment',
  'keyAgreement',
  'keyCertSign',
  'cRLSign',
] as const satisfies readonly (keyof typeof KeyUsageFlags)[];

const EXTENDED_KEY_USAGES = {
  serverAuth: id_kp_serverAuth,
  clientAuth: id_kp_clientAuth,
  codeSigning: id_kp_codeSigning,
  emailProtection: id_kp_emailProtection,
  timeStamping: id_kp_timeStamping,
} as const;

const objectIdentifier = z.string().regex(/^\d+(\.\d+)+$/, 'expected a dotted OID');

export const IssueCertificateOptionsSchema = z
  .strictObject({
    subject: DistinguishedNameSchema,
    /** The certified key (SubjectPublicKeyInfo PEM), e.g. taken from a CSR. */
    publicKeyPem: z.string().min(1),
    validityDays: z.number().positive().max(36_500),
    /** Start of validity; default: one minute ago, so a slightly slow clock elsewhere still accepts it. */
    notBefore: z.date().optional(),
    /** End of validity; overrides `validityDays` (tests use it for certificates that already expired). */
    notAfter: z.date().optional(),
    /** Positive serial as hex; default: 16 random bytes. */
    serialNumberHex: z
      .string()
      .regex(/^[0-9a-fA-F]{2,40}$/)
      .optional(),
    basicConstraints: z
      .strictObject({ ca: z.boolean(), pathLength: z.number().int().min(0).optional() })
      .optional(),
    keyUsage: z.array(z.enum(KEY_USAGES)).optional(),
    /** Names from EXTENDED_KEY_USAGES or dotted OIDs. */
    extendedKeyUsage: z
      .array(
        z.union([
          z.enum(Object.keys(EXTENDED_KEY_USAGES) as [keyof typeof EXTENDED_KEY_USAGES]),
          objectIdentifier,
        ]),
      )
      .optional(),
    subjectAltName: z
      .strictObject({
        dnsNames: z.array(z.string().min(1)).optional(),
        uris: z.array(z.string().min(1)).optional(),
        ipAddresses: z.array(z.string().min(1)).optional(),
        emails: z.array(z.string().min(1)).optional(),
      })
      .optional(),
  })
  .refine((o) => !o.notAfter || !o.notBefore || o.notAfter > o.notBefore, 'notAfter must be after notBefore');
export type IssueCertificateOptions = z.input<typeof IssueCertificateOptionsSchema>;

/**
 * Issues a certificate for `publicKeyPem`, signed by `issuer`. Generic: the caller chooses subject,
 * validity and extensions (none are added beyond those asked for, except the key identifiers).
 */
export function issueCertificate(issuer: CertificateAuthority, options: IssueCertificateOptions): string {
  const opts = IssueCertificateOptionsSchema.parse(options);
  const issuerCert = parseCertificatePem(issuer.certificatePem);
  const issuerKey = loadSigningKey(issuer.privateKeyPem);
  const issuerAsn = AsnConvert.parse(issuerCert.der, Certificate);
  return buildCertificate({
    subject: opts.subject,
    subjectKey: loadVerificationKey(opts.publicKeyPem),
    issuerName: issuerAsn.tbsCertificate.subject,
    issuerKey,
    issuerKeyId: subjectKeyIdOf(issuerAsn) ?? keyIdentifier(createPublicKey(issuerKey)),
    opts,
  });
}

/** What every certificate issued for a freshly generated key pair is told: its subject and validity. */
export interface GeneratedCertificateOptions {
  commonName: string;
  validityDays: number;
  keyType: KeyType;
  organization?: string;
  notBefore?: Date;
}

export interface CreateRootCaOptions extends GeneratedCertificateOptions {
  /** Most intermediates allowed below the root; default: unlimited. */
  pathLength?: number;
}

/** A self-signed root CA (basicConstraints cA, keyUsage keyCertSign + cRLSign). */
export function createRootCa(options: CreateRootCaOptions): CertificateAuthority {
  const keys = generateKeyPair(options.keyType);
  const opts = IssueCertificateOptionsSchema.parse(caCertificateOptions(options, keys.publicKeyPem));
  const key = loadSigningKey(keys.privateKeyPem);
  const certificatePem = buildCertificate({
    subject: opts.subject,
    subjectKey: loadVerificationKey(keys.publicKeyPem),
    issuerName: distinguishedName(opts.subject),
    issuerKey: key,
    issuerKeyId: keyIdentifier(createPublicKey(key)),
    opts,
  });
  return { ...keys, certificatePem };
}

export interface CreateIntermediateCaOptions extends GeneratedCertificateOptions {
  issuer: CertificateAuthority;
  pathLength?: number;
}

/** An intermediate CA signed by `issuer`. */
export function createIntermediateCa(options: CreateIntermediateCaOptions): CertificateAuthority {
  const keys = generateKeyPair(options.keyType);
  const certificatePem = issueCertificate(options.issuer, caCertificateOptions(options, keys.publicKeyPem));
  return { ...keys, certificatePem };
}

export interface IssueCodeSigningCertificateOptions extends GeneratedCertificateOptions {
  issuer: CertificateAuthority;
  /** Overrides `validityDays`; a date in the past gives an already-expired certificate. */
  notAfter?: Date;
  /** Default true. False issues a leaf WITHOUT extendedKeyUsage codeSigning (tests: must be rejected). */
  codeSigning?: boolean;
}

/** A code-signing leaf: keyUsage digitalSignature (critical), extendedKeyUsage codeSigning, not a CA. */
export function issueCodeSigningCertificate(options: IssueCodeSigningCertificateOptions): CertifiedKeyPair {
  const keys = generateKeyPair(options.keyType);
  const certificatePem = issueCertificate(options.issuer, {
    ...generatedCertificateOptions(options, keys.publicKeyPem),
    ...(options.notAfter && { notAfter: options.notAfter }),
    basicConstraints: { ca: false },
    keyUsage: ['digitalSignature'],
    extendedKeyUsage: options.codeSigning === false ? ['clientAuth'] : ['codeSigning'],
  });
  return { ...keys, certificatePem };
}

function generatedCertificateOptions(
  options: GeneratedCertificateOptions,
  publicKeyPem: string,
): IssueCertificateOptions {
  return {
    subject: {
      commonName: options.commonName,
      ...(options.organization && { organization: options.organization }),
    },
    publicKeyPem,
    validityDays: options.validityDays,
    ...(options.notBefore && { notBefore: options.notBefore }),
  };
}

/** A CA, root or intermediate: may issue certificates (and CRLs), with at most `pathLength` CAs below. */
function caCertificateOptions(
  options: GeneratedCertificateOptions & { pathLength?: number },
  publicKeyPem: string,
): IssueCertificateOptions {
  return {
    ...generatedCertificateOptions(options, publicKeyPem),
    basicConstraints: {
      ca: true,
      ...(options.pathLength !== undefined && { pathLength: options.pathLength }),
    },
    keyUsage: ['keyCertSign', 'cRLSign'],
  };
}

type ParsedIssueOptions = z.output<typeof IssueCertificateOptionsSchema>;

function buildCertificate(input: {
  subject: DistinguishedName;
  subjectKey: KeyObject;
  issuerName: Name;
  issuerKey: KeyObject;
  issuerKeyId: Buffer;
  opts: ParsedIssueOptions;
}): string {
  const { opts } = input;
  const notBefore = opts.notBefore ?? new Date(Date.now() - 60_000);
  const notAfter = opts.notAfter ?? new Date(notBefore.getTime() + opts.validityDays * 86_400_000);
  const algorithm = signatureAlgorithm(input.issuerKey);
  const spkiDer = input.subjectKey.export({ type: 'spki', format: 'der' });

  const extensions: Extension[] = [];
  const add = (extnID: string, critical: boolean, value: unknown) =>
    extensions.push(
      new Extension({ extnID, critical, extnValue: new OctetString(AsnConvert.serialize(value)) }),
    );
  if (opts.basicConstraints)
    add(
      EXTENSION.basicConstraints,
      true,
      new BasicConstraints({
        cA: opts.basicConstraints.ca,
        ...(opts.basicConstraints.ca &&
          opts.basicConstraints.pathLength !== undefined && {
            pathLenConstraint: opts.basicConstraints.pathLength,
          }),
      }),
    );
  if (opts.keyUsage?.length)
    add(
      EXTENSION.keyUsage,
      true,
      new KeyUsage(opts.keyUsage.reduce((flags, u) => flags | KeyUsageFlags[u], 0)),
    );
  if (opts.extendedKeyUsage?.length)
    add(
      EXTENSION.extendedKeyUsage,
      false,
      new ExtendedKeyUsage(
        opts.extendedKeyUsage.map((u) => EXTENDED_KEY_USAGES[u as keyof typeof EXTENDED_KEY_USAGES] ?? u),
      ),
    );
  const san = opts.subjectAltName;
  if (san) {
    const names = [
      ...(san.dnsNames ?? []).map((dNSName) => new GeneralName({ dNSName })),
      ...(san.uris ?? []).map((uniformResourceIdentifier) => new GeneralName({ uniformResourceIdentifier })),
      ...(san.ipAddresses ?? []).map((iPAddress) => new GeneralName({ iPAddress })),
      ...(san.emails ?? []).map((rfc822Name) => new GeneralName({ rfc822Name })),
    ];
    if (names.length > 0) add(EXTENSION.subjectAltName, false, new SubjectAlternativeName(names));
  }
  add(EXTENSION.subjectKeyIdentifier, false, new SubjectKeyIdentifier(keyIdentifier(input.subjectKey)));
  add(
    EXTENSION.authorityKeyIdentifier,
    false,
    new AuthorityKeyIdentifier({ keyIdentifier: new KeyIdentifier(input.issuerKeyId) }),
  );

  const tbs = new TBSCertificate({
    version: Version.v3,
    serialNumber: serialNumber(opts.serialNumberHex),
    signature: algorithm,
    issuer: input.issuerName,
    validity: new Validity({ notBefore, notAfter }),
    subject: distinguishedName(input.subject),
    subjectPublicKeyInfo: AsnConvert.parse(spkiDer, SubjectPublicKeyInfo),
    extensions: new Extensions(extensions),
  });
  const tbsDer = Buffer.from(AsnConvert.serialize(tbs));
  const signature = signBytes(input.issuerKey, tbsDer);
  const der = Buffer.from(
    AsnConvert.serialize(
      new Certificate({
        tbsCertificate: tbs,
        signatureAlgorithm: algorithm,
        signatureValue: toArrayBuffer(signature),
      }),
    ),
  );
  return toPem('CERTIFICATE', der);
}

/** X.509 signature algorithm for the issuer's key; parameters absent, as RFC 5758 / RFC 8410 require. */
function signatureAlgorithm(key: KeyObject): AlgorithmIdentifier {
  if (key.asymmetricKeyType === 'ed25519') return new AlgorithmIdentifier({ algorithm: '1.3.101.112' });
  const byCurve: Record<string, string> = {
    prime256v1: '1.2.840.10045.4.3.2', // ecdsa-with-SHA256
    secp384r1: '1.2.840.10045.4.3.3', // ecdsa-with-SHA384
    secp521r1: '1.2.840.10045.4.3.4', // ecdsa-with-SHA512
  };
  const oid = byCurve[key.asymmetricKeyDetails?.namedCurve ?? ''];
  if (!oid) throw new TypeError('issuer key must be ECDSA (P-256, P-384, P-521) or Ed25519');
  return new AlgorithmIdentifier({ algorithm: oid });
}

function distinguishedName(dn: DistinguishedName): Name {
  const rdn = (type: string, value: AttributeValue) =>
    new RelativeDistinguishedName([new AttributeTypeAndValue({ type, value })]);
  const rdns: RelativeDistinguishedName[] = [];
  if (dn.country) rdns.push(rdn('2.5.4.6', new AttributeValue({ printableString: dn.country })));
  if (dn.organization) rdns.push(rdn('2.5.4.10', new AttributeValue({ utf8String: dn.organization })));
  if (dn.organizationalUnit)
    rdns.push(rdn('2.5.4.11', new AttributeValue({ utf8String: dn.organizationalUnit })));
  rdns.push(rdn('2.5.4.3', new AttributeValue({ utf8String: dn.commonName })));
  return new Name(rdns);
}

/** RFC 7093 method 1: the leftmost 160 bits of the SHA-256 of the subjectPublicKey bit string. */
function keyIdentifier(publicKey: KeyObject): Buffer {
  const spki = AsnConvert.parse(publicKey.export({ type: 'spki', format: 'der' }), SubjectPublicKeyInfo);
  return createHash('sha256').update(Buffer.from(spki.subjectPublicKey)).digest().subarray(0, 20);
}

function subjectKeyIdOf(cert: Certificate): Buffer | undefined {
  const ext = cert.tbsCertificate.extensions?.find((e) => e.extnID === EXTENSION.subjectKeyIdentifier);
  if (!ext) return undefined;
  return Buffer.from(AsnConvert.parse(ext.extnValue.buffer, SubjectKeyIdentifier).buffer);
}

/** A positive, minimally encoded INTEGER. */
function serialNumber(hex?: string): ArrayBuffer {
  let bytes = hex ? Buffer.from(hex.length % 2 ? `0${hex}` : hex, 'hex') : randomBytes(16);
  if (!hex) bytes[0] = ((bytes[0] as number) & 0x7f) | 0x40;
  while (bytes.length > 1 && bytes[0] === 0 && ((bytes[1] as number) & 0x80) === 0) bytes = bytes.subarray(1);
  if (((bytes[0] as number) & 0x80) !== 0) bytes = Buffer.concat([Buffer.from([0]), bytes]);
  return toArrayBuffer(bytes);
}

function toArrayBuffer(buf: Buffer): ArrayBuffer {
  return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) as ArrayBuffer;
}

function toPem(label: string, der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}
