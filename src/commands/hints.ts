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
  "700027": "the certificate is not registered with the app, or the private key is not " +
    "its key: upload the certificate (public part) under Certificates & secrets",
  "700025": "the app is a public client: remove clientSecret from this account",
  "700082": "the refresh token expired after 90 days unused: run authorize again",
  "7000215": "invalid client secret: check clientSecret (it may have expired in Azure)",
  "7000218": "public client flows are disabled: enable 'Allow public client flows' " +
    "in the app registration, or configure a clientSecret",
  "9002313": "the request is malformed: check tenant, clientId and scope",
  "1002012": "client credentials need a scope ending in /.default",
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

/** Which app-only credential a domain entry uses. */
export type AppCredentialType = "serviceAccount" | "clientSecret" | "certificate";

/**
 * A hint for a token failure of a domain entry's app-only credential: invalid secret or
 * certificate, consent or delegation missing, a mailbox the tenant does not know.
 */
export function appOnlyTokenHint(
  credential: AppCredentialType,
  oauthError: string | undefined,
  message: string,
): string | undefined {
  const aad = message.match(/AADSTS(\d+)/);
  if (aad?.[1] === "65001") {
    return "AADSTS65001: admin consent missing: grant admin consent for the application " +
      "permission SMTP.SendAsApp (Office 365 Exchange Online)";
  }
  if (aad && AADSTS[aad[1]]) return `AADSTS${aad[1]}: ${AADSTS[aad[1]]}`;
  if (credential === "serviceAccount") {
    if (oauthError === "unauthorized_client") {
      return "domain-wide delegation missing: in the Admin console (Security > Access and data " +
        "control > API controls > Domain-wide delegation) add the service account's client " +
        "id with the scope https://mail.google.com/";
    }
    if (/Invalid email or User ID/i.test(message)) {
      return "no such user in the Workspace domain (or outside the delegated domain): check " +
        "the mailbox address";
    }
    if (/Signature/i.test(message)) {
      return "the key is not a current key of the service account: create a new JSON key " +
        "and configure it";
    }
    if (/iat|exp|short-lived|timeframe/i.test(message)) {
      return "the assertion's times were refused: check the server clock (NTP)";
    }
    if (oauthError === "invalid_grant") {
      return "the JWT was refused: check the key file and that the mailbox exists";
    }
  }
  if (oauthError === "invalid_client") {
    return credential === "certificate"
      ? "the client assertion was refused: check clientId, the certificate and its key"
      : "the client secret is wrong or expired: create a new one under Certificates & secrets";
  }
  if (oauthError === "unauthorized_client") {
    return "this app may not use client credentials here: check the client id and tenant";
  }
  if (oauthError === "invalid_scope") return "scope refused: check the provider preset";
  return tokenHint("", undefined, message);
}

/** A hint for an SMTP failure of a domain mailbox (app-only token). */
export function appOnlySmtpHint(credential: AppCredentialType, reply: string): string | undefined {
  if (/5\.7\.3\b/.test(reply)) {
    return "the app may not send as this mailbox: register its service principal " +
      "(New-ServicePrincipal) and give it the mailbox (Add-MailboxPermission … -AccessRights " +
      "FullAccess), and check admin consent for SMTP.SendAsApp";
  }
  if (/^535/.test(reply) && credential === "serviceAccount") {
    return "token not accepted: the delegation must grant https://mail.google.com/ and the " +
      "mailbox must have Gmail enabled";
  }
  return smtpHint(credential === "serviceAccount" ? "google" : "microsoft", reply);
}
