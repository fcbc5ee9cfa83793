import type { ApiPaths } from './client.js';

/** The upload route, checked against the generated API so a rename on the server breaks the build. */
const UPLOAD_ROUTE = '/api/v1/models/{model}/versions/{version}' satisfies keyof ApiPaths;

/**
 * Uploads a model file with progress. fetch cannot report upload progress, so this one call uses
 * XMLHttpRequest; the route and its answer come from the same generated types as the client.
 */
export function uploadModel(options: {
  model: string;
  version: string;
  description?: string;
  file: File;
  csrfToken: string | undefined;
  onProgress(fraction: number): void;
}): Promise<{ warning?: string }> {
  const path = UPLOAD_ROUTE.replace('{model}', encodeURIComponent(options.model)).replace(
    '{version}',
    encodeURIComponent(options.version),
  );
  const url =
    options.description === undefined
      ? path
      : `${path}?${new URLSearchParams({ description: options.description })}`;
  const contentType = /\.(tar\.gz|tgz)$/i.test(options.file.name)
    ? 'application/gzip'
    : 'application/octet-stream';
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open('POST', url);
    request.setRequestHeader('content-type', contentType);
    if (options.csrfToken !== undefined) request.setRequestHeader('x-csrf-token', options.csrfToken);
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) options.onProgress(event.loaded / event.total);
    };
    request.onload = () => {
      if (request.status >= 200 && request.status < 300) {
        options.onProgress(1);
        // The server's warning, if any (a package the devices it enrolled will refuse).
        let warning: string | undefined;
        try {
          warning = (JSON.parse(request.responseText) as { warning?: unknown }).warning as string | undefined;
        } catch {
          // An answer that is not JSON carries no warning.
        }
        resolve(typeof warning === 'string' ? { warning } : {});
        return;
      }
      let message = `upload failed (${request.status})`;
      try {
        message = (JSON.parse(request.responseText) as { message?: string }).message ?? message;
      } catch {
        // Not JSON: keep the status.
      }
      reject(new Error(message));
    };
    request.onerror = () => reject(new Error('upload failed: the connection broke'));
    request.send(options.file);
  });
}
