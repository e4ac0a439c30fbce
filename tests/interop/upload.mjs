// Upload a file to a tus endpoint with tus-js-client, optionally interrupting and resuming.
// usage: node upload.mjs <endpoint> <file> <chunkSize> <normal|interrupt> [bearer-token]
// Prints one JSON line: {"url", "resumedFrom", "size"}.
import { readFileSync } from "node:fs";
import * as tus from "tus-js-client";

const [endpoint, file, chunkArg, mode, token] = process.argv.slice(2);
const data = readFileSync(file);
const chunkSize = Number(chunkArg);
const headers = token ? { Authorization: `Bearer ${token}` } : {};

function start(options) {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(data, {
      endpoint,
      chunkSize,
      headers,
      retryDelays: [0, 200, 500],
      metadata: { filename: file.split("/").pop(), kind: "interop" },
      ...options,
      onError: reject,
      onSuccess: () => resolve(upload),
    });
    if (options.onStart) options.onStart(upload);
    upload.start();
  });
}

let resumedFrom = 0;
let url;
if (mode === "interrupt") {
  // Stop after the first chunk has been acknowledged, as a dropped connection would.
  url = await new Promise((resolve, reject) => {
    let upload;
    start({
      onStart: (u) => (upload = u),
      onChunkComplete: (_size, accepted) => {
        if (accepted >= chunkSize) {
          upload.abort(false).then(() => resolve(upload.url));
        }
      },
    }).catch(reject);
  });
  const resumed = await start({
    uploadUrl: url,
    onStart: () => {},
    onProgress: (sent) => {
      if (!resumedFrom) resumedFrom = sent;
    },
  });
  url = resumed.url;
} else {
  url = (await start({})).url;
}
console.log(JSON.stringify({ url, resumedFrom, size: data.length }));
