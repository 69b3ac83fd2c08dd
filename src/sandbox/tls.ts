/**
 * TLS material of the sandbox provider.
 *
 * SANDBOX ONLY. These PEM strings are public: they are committed to this
 * repository, so anyone can impersonate a server that uses them. They exist so
 * that the demo and the integration tests can run STARTTLS with full
 * certificate verification on loopback. Never use them, or trust
 * {@link SANDBOX_CA_PEM}, in production.
 *
 * Generated once with openssl: an ECDSA P-256 CA (CA:TRUE, valid 2025-01-01 to
 * 2125-01-01) and a leaf signed by it (CA:FALSE, extendedKeyUsage serverAuth,
 * subjectAltName DNS:localhost, IP:127.0.0.1, valid 2025-01-01 to 2124-01-01).
 *
 * @module
 */

export { SANDBOX_CA_PEM } from "./ca.ts";

/**
 * Server certificate for `localhost` and `127.0.0.1`, signed by
 * {@link SANDBOX_CA_PEM}. Public and for tests only.
 */
export const SANDBOX_CERT_PEM = `-----BEGIN CERTIFICATE-----
MIICEjCCAbmgAwIBAgICEAEwCgYIKoZIzj0EAwIwVzEhMB8GA1UECgwYc210cC1v
YXV0aC1yZWxheSBzYW5kYm94MTIwMAYDVQQDDClTYW5kYm94IFRlc3QgQ0EgLSBw
dWJsaWMga2V5LCBuZXZlciB0cnVzdDAgFw0yNTAxMDEwMDAwMDBaGA8yMTI0MDEw
MTAwMDAwMFowNzEhMB8GA1UECgwYc210cC1vYXV0aC1yZWxheSBzYW5kYm94MRIw
EAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASrvZ2S
28a6F6MCk+MFoKaruuqUjr7skbcGJVObCD8cKAA/oTtWmUnoFf1GRIy1cCff+XJh
Mvz0FX6T2yJbDhKGo4GSMIGPMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgeA
MBMGA1UdJQQMMAoGCCsGAQUFBwMBMBoGA1UdEQQTMBGCCWxvY2FsaG9zdIcEfwAA
ATAdBgNVHQ4EFgQUGPPXgycXjdoTqKmu9Cy6qwa61b8wHwYDVR0jBBgwFoAURRWU
/eJj8Kf6TJnvM2bmSn0VXjswCgYIKoZIzj0EAwIDRwAwRAIgbCZlwhTAtPWT4czF
RC/W8SXFJKSzpB7MMWYOwfKb5zYCICrFKrZ+iCA8oI3PxwFBoLWIL2bntarOfNul
O9xVMOzQ
-----END CERTIFICATE-----
`;

/**
 * PKCS#8 private key of {@link SANDBOX_CERT_PEM}. Deliberately public (it is in
 * the source tree), so it protects nothing: sandbox and tests only.
 */
export const SANDBOX_KEY_PEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggR9sgNfpZANDNQG/
6ITC3+ZKQ7pE6f2e2awXBmACwlyhRANCAASrvZ2S28a6F6MCk+MFoKaruuqUjr7s
kbcGJVObCD8cKAA/oTtWmUnoFf1GRIy1cCff+XJhMvz0FX6T2yJbDhKG
-----END PRIVATE KEY-----
`;
