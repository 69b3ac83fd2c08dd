/**
 * Microsoft Graph `POST /v1.0/users/{mailbox}/sendMail` with the MIME message in base64
 * (`Content-Type: text/plain`): 202 means accepted. Graph reads the recipients from the
 * To, Cc and Bcc header fields (the transport makes them match the envelope) and always
 * saves a copy in Sent Items for a MIME send. Its request size limit is 4 MB of base64,
 * about 3 MB of message, decided here before sending. A `From:` the mailbox may not send
 * as is refused `403 ErrorSendAsDenied`: `550 5.7.1`.
 * @module
 */
import { reply } from "../smtp/reply.ts";
import type { TransportSettings } from "./transport.ts";
import { type ApiError, base64Of, type HttpApi, usualRefusal } from "./http_transport.ts";

/** Graph's base URL. */
export const GRAPH_URL = "https://graph.microsoft.com";
/** Graph's request size limit: 4 MB (learn.microsoft.com, "Microsoft Graph service limits"). */
export const GRAPH_MAX_REQUEST_BYTES = 4 * 1024 * 1024;
/** Delegated scope for sending as the signed-in mailbox, with a refresh token. */
export const GRAPH_SCOPE = "https://graph.microsoft.com/Mail.Send offline_access";

const NAME = "Microsoft Graph";

/** Bytes of base64 for `bytes` of message. */
function base64Length(bytes: number): number {
  return 4 * Math.ceil(bytes / 3);
}

/** The Graph {@link HttpApi} for `settings`. */
export function graphApi(settings: Extract<TransportSettings, { kind: "graph" }>): HttpApi {
  const limit = settings.maxRequestBytes;
  const limitText = `its request limit: ${limit} bytes of base64, ${
    Math.floor(limit / 4) * 3
  } bytes of message`;
  const url = (user: string) =>
    `${settings.apiUrl}/v1.0/users/${encodeURIComponent(user)}/sendMail`;
  return {
    kind: "graph",
    name: NAME,
    tooBig(bytes) {
      if (base64Length(bytes) <= limit) return undefined;
      return reply(552, "5.3.4", `Message too big for ${NAME} (${limitText})`);
    },
    request(user, prefix, message) {
      return {
        url: url(user),
        headers: { "content-type": "text/plain" },
        body: base64Of(prefix, message.bytes()),
      };
    },
    probe(user) {
      return { url: url(user), headers: { "content-type": "text/plain" }, body: "" };
    },
    accepted(status) {
      return reply(250, "2.0.0", `${status} Accepted by ${NAME}`);
    },
    throttled(e: ApiError) {
      return e.status === 429;
    },
    refused(e: ApiError) {
      const what = `${e.status} ${e.code}${e.message ? `: ${e.message}` : ""}`;
      if (e.code === "ErrorSendAsDenied") {
        return {
          kind: "rejected",
          reply: reply(550, "5.7.1", `${NAME} refused the sender (${what})`),
        };
      }
      if (e.code === "ErrorInvalidRecipients") {
        return {
          kind: "rejected",
          reply: reply(550, "5.1.3", `${NAME} refused the recipients (${what})`),
        };
      }
      if (e.code === "ErrorMessageSizeExceeded") {
        return {
          kind: "rejected",
          reply: reply(552, "5.3.4", `Message too big for ${NAME} (${what})`),
        };
      }
      return usualRefusal(NAME, e, limitText);
    },
  };
}
