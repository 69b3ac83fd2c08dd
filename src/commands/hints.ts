/**
 * What to do about a failure: one line an operator can act on, for the errors users of
 * OAuth2 mail proxies hit most (revoked tokens, Microsoft app-registration mistakes,
 * SMTP AUTH disabled, Google apps in "Testing").
 * @module
 */

/** Microsoft identity platform error codes (AADSTS…) and what they usually mean. */
const AADSTS: Record<string, string> = {
  "50020": "the user is not in this tenant: check the account's tenant",
  "50034": "the user account does not exist in this tenant: check email and tenant",
  "50076": "MFA/conditional access requires an interactive sign-in: run authorize again",
  "50079": "MFA enrolment required: run authorize again after enrolling",
  "50126": "invalid username or password during sign-in: run authorize again",
  "50173": "the grant expired (password changed?): run authorize again",
  "65001": "consent missing: grant admin or user consent for SMTP.Send and offline_access",
  "70000": "the grant is invalid or malformed: run authorize again",
  "70008": "the refresh token expired or was revoked: run authorize again",
  "90002": "tenant not found: check the tenant id or domain",
  "700016": "application not found in this tenant: check clientId and tenant",
  "700024": "client assertion is not within its valid time range: check the server clock",
  "700025": "the app is a public client: remove clientSecret from this account",
  "700082": "the refresh token expired after 90 days unused: run authorize again",
  "7000215": "invalid client secret: check clientSecret (it may have expired in Azure)",
  "7000218": "public client flows are disabled: enable 'Allow public client flows' " +
    "in the app registration, or configure a clientSecret",
  "9002313": "the request is malformed: check tenant, clientId and scope",
};

/** A hint for a token failure, given the provider kind and the error text. */
export function tokenHint(provider: string, oauthError: string | undefined, message: string) {
  const aad = message.match(/AADSTS(\d+)/);
  if (aad && AADSTS[aad[1]]) return `AADSTS${aad[1]}: ${AADSTS[aad[1]]}`;
  if (oauthError === "no_refresh_token") return "no refresh token yet: run authorize";
  if (oauthError === "invalid_grant") {
    const base = "refresh token revoked or expired: run authorize";
    return provider === "google"
      ? `${base} (a Google app that is External and in "Testing" gets 7-day tokens: publish it)`
      : base;
  }
  if (oauthError === "invalid_client") {
    return "client id or secret wrong: check clientId/clientSecret";
  }
  if (oauthError === "unauthorized_client") {
    return "this client may not use this grant: check the app registration";
  }
  if (oauthError === "invalid_scope") return "scope refused: check the provider preset's scope";
  if (/no answer within|unreachable/.test(message)) {
    return "token endpoint unreachable: check network, proxy and --allow-net";
  }
  return undefined;
}

/** A hint for an SMTP failure during AUTH or connect. */
export function smtpHint(provider: string, reply: string) {
  if (/5\.7\.139/.test(reply)) {
    return "SMTP AUTH is disabled for the tenant or mailbox: enable Authenticated SMTP " +
      "(Set-CASMailbox -SmtpClientAuthenticationDisabled $false)";
  }
  if (/^535/.test(reply)) {
    return provider === "google"
      ? "token not accepted: the token must carry https://mail.google.com/ and belong to this address"
      : "token not accepted: it must carry SMTP.Send and belong to this mailbox";
  }
  if (/^432|4\.3\.2/.test(reply)) return "too many concurrent connections for this mailbox";
  if (/certificate|TLS|ETLS/i.test(reply)) return "TLS failed: check the SMTP host name and CA";
  if (/ECONNREFUSED|ETIMEDOUT|ENOTFOUND|EDNS|Requires net access/.test(reply)) {
    return "SMTP server unreachable: check host, port, firewall and --allow-net";
  }
  return undefined;
}
