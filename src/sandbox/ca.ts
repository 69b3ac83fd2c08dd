/**
 * The sandbox CA's certificate, alone in its module so that the config loader, which
 * trusts it for the sandbox provider on loopback only, does not pull the sandbox's
 * private key into the relay's module graph (and a compiled binary). See `tls.ts`.
 * @module
 */

/**
 * Certificate of the sandbox CA, the trust anchor a client passes as `ca`
 * (e.g. node:tls `ca: SANDBOX_CA_PEM` with `servername: "localhost"`).
 * Public and for tests only: never add it to a production trust store.
 */
export const SANDBOX_CA_PEM = `-----BEGIN CERTIFICATE-----
MIIB4jCCAYigAwIBAgICEAAwCgYIKoZIzj0EAwIwVzEhMB8GA1UECgwYc210cC1v
YXV0aC1yZWxheSBzYW5kYm94MTIwMAYDVQQDDClTYW5kYm94IFRlc3QgQ0EgLSBw
dWJsaWMga2V5LCBuZXZlciB0cnVzdDAgFw0yNTAxMDEwMDAwMDBaGA8yMTI1MDEw
MTAwMDAwMFowVzEhMB8GA1UECgwYc210cC1vYXV0aC1yZWxheSBzYW5kYm94MTIw
MAYDVQQDDClTYW5kYm94IFRlc3QgQ0EgLSBwdWJsaWMga2V5LCBuZXZlciB0cnVz
dDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABLxzoZSqnXfijLxRa7GOfslcUXKm
ebT35Ou+/WlDHI3Tzz+GRAiY4Pg6fstKWOH376kCOC0kdHMcKEQS5xgb+0+jQjBA
MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBRFFZT9
4mPwp/pMme8zZuZKfRVeOzAKBggqhkjOPQQDAgNIADBFAiEAw4ikCgqncXDeGqwT
FyJjsHJ37EdoW7garntxRvt0E3UCIDQzUQitKQt2vkr4BsGCjYn6Chaw9iFHbnWQ
oZSHo1Y9
-----END CERTIFICATE-----
`;
