/**
 * The Gmail API's `users.messages.send`: the message base64url in JSON (`{"raw": …}`),
 * or, above `mediaAbove` bytes, the message itself to the media upload endpoint
 * (`/upload/…?uploadType=media`, `Content-Type: message/rfc822`); 200 means sent. Gmail
 * reads the recipients from the To, Cc and Bcc header fields (the transport makes them
 * match the envelope) and removes Bcc. Its limit is 35 MB per message, decided here
 * before sending. A `From:` that is not the mailbox or one of its "send mail as"
 * addresses is replaced by the mailbox, as over SMTP (not refused).
 * @module
 */
import { reply } from "../smtp/reply.ts";
import type { TransportSettings } from "./transport.ts";
import { type ApiError, base64Of, type HttpApi, usualRefusal } from "./http_transport.ts";

/** The Gmail API's base URL. */
export const GMAIL_API_URL = "https://gmail.googleapis.com";
/** `messages.send`'s maximum message size: 35 MB (its reference page). */
export const GMAIL_MAX_MESSAGE_BYTES = 35 * 1024 * 1024;
/** Above this the media upload endpoint is used (the JSON endpoint's limit is not documented). */
export const GMAIL_MEDIA_ABOVE = 1024 * 1024;
/** The narrowest scope that sends (`https://mail.google.com/` also does). */
export const GMAIL_SCOPE = "https://www.googleapis.com/auth/gmail.send";

const NAME = "the Gmail API";
/** Google's reasons for "slow down" (usage limits), answered with 403 or 429. */
const RATE_REASONS = new Set([
  "rateLimitExceeded",
  "userRateLimitExceeded",
  "dailyLimitExceeded",
  "quotaExceeded",
  "RESOURCE_EXHAUSTED",
]);

/** The Gmail {@link HttpApi} for `settings`. */
export function gmailApi(settings: Extract<TransportSettings, { kind: "gmail-api" }>): HttpApi {
  const limitText = `its limit: ${settings.maxMessageBytes} bytes`;
  const path = (user: string) => `/gmail/v1/users/${encodeURIComponent(user)}/messages/send`;
  return {
    kind: "gmail-api",
    name: NAME,
    tooBig(bytes) {
      if (bytes <= settings.maxMessageBytes) return undefined;
      return reply(552, "5.3.4", `Message too big for ${NAME} (${limitText})`);
    },
    request(user, prefix, message) {
      if (prefix.length + message.length > settings.mediaAbove) {
        return {
          url: `${settings.apiUrl}/upload${path(user)}?uploadType=media`,
          headers: { "content-type": "message/rfc822" },
          // A Blob of the chunks as received: the message is never joined into one buffer
          // (fetch given one Uint8Array held 4.2x its size, a Blob of the chunks 1.8x:
          // `deno task bench:fetch-body`).
          body: new Blob([prefix, ...message.parts] as Uint8Array<ArrayBuffer>[]),
        };
      }
      return {
        url: `${settings.apiUrl}${path(user)}`,
        headers: { "content-type": "application/json" },
        body: `{"raw":"${base64Of(prefix, message.bytes(), true)}"}`,
      };
    },
    probe(user) {
      return {
        url: `${settings.apiUrl}${path(user)}`,
        headers: { "content-type": "application/json" },
        body: `{"raw":""}`,
      };
    },
    accepted(status, body) {
      let id = "";
      try {
        const parsed = JSON.parse(body);
        if (typeof parsed?.id === "string") id = `, id ${parsed.id.slice(0, 40)}`;
      } catch {
        // An answer without an id is still a success.
      }
      return reply(250, "2.0.0", `${status} Sent by ${NAME}${id}`);
    },
    throttled(e: ApiError) {
      return e.status === 429 || (e.status === 403 && RATE_REASONS.has(e.code));
    },
    refused(e: ApiError) {
      return usualRefusal(NAME, e, limitText);
    },
  };
}
