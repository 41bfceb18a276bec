/**
 * The AI Grid REST API, as the sidebar uses it. Every call goes through the
 * server connection of JupyterLab, so it carries the session's credentials.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { ICluster, IJob, ILogLine } from './types';

/** A refusal of the master: its message, the field it names, the HTTP status. */
export class AIGridError extends Error {
  constructor(
    message: string,
    readonly field: string | null = null,
    readonly status = 0
  ) {
    super(message);
  }
}

function url(settings: ServerConnection.ISettings, path: string): string {
  return URLExt.join(settings.baseUrl, 'aigrid/api', path);
}

async function send(
  path: string,
  init: RequestInit = {},
  settings = ServerConnection.makeSettings()
): Promise<Response> {
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url(settings, path), init, settings);
  } catch (error) {
    throw new AIGridError(`cannot reach the AI Grid master: ${error}`);
  }
  if (!response.ok) {
    let body: { message?: string; field?: string | null } = {};
    try {
      body = await response.json();
    } catch {
      // Not JSON: the status text says enough.
    }
    throw new AIGridError(
      body.message || response.statusText || `HTTP ${response.status}`,
      body.field ?? null,
      response.status
    );
  }
  return response;
}

export async function listJobs(): Promise<IJob[]> {
  return (await (await send('jobs')).json()).jobs;
}

export async function getJob(id: string): Promise<IJob> {
  return (await send(`jobs/${encodeURIComponent(id)}`)).json();
}

export async function cancelJob(id: string): Promise<IJob> {
  return (await send(`jobs/${encodeURIComponent(id)}`, { method: 'DELETE' })).json();
}

/** Ask a running job to write a checkpoint (202: the job view, its checkpoint request pending). */
export async function checkpointJob(id: string): Promise<IJob> {
  return (
    await send(`jobs/${encodeURIComponent(id)}/checkpoint`, { method: 'POST', body: '{}' })
  ).json();
}

/**
 * Move a running job to other nodes: to `node` if given, else where the
 * scheduling policy chooses (202: the job view, its migration checkpointing).
 */
export async function migrateJob(id: string, node?: string): Promise<IJob> {
  const body = node ? { node } : {};
  return (
    await send(`jobs/${encodeURIComponent(id)}/migrate`, {
      method: 'POST',
      body: JSON.stringify(body)
    })
  ).json();
}

export async function submitJob(spec: Record<string, unknown>): Promise<IJob> {
  return (await send('jobs', { method: 'POST', body: JSON.stringify(spec) })).json();
}

export async function getCluster(): Promise<ICluster> {
  return (await send('cluster')).json();
}

/**
 * Follow a job's output (the last `tail` lines of each rank, then live) until
 * it ends or `signal` aborts; `onLine` gets each line.
 */
export async function followLogs(
  id: string,
  onLine: (line: ILogLine) => void,
  signal: AbortSignal,
  tail = 50
): Promise<void> {
  const response = await send(
    `jobs/${encodeURIComponent(id)}/logs?follow=1&tail=${tail}`,
    { signal }
  );
  if (!response.body) {
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) {
      break;
    }
    buffered += decoder.decode(value, { stream: true });
    const lines = buffered.split('\n');
    buffered = lines.pop() ?? '';
    for (const line of lines) {
      if (line.trim()) {
        onLine(JSON.parse(line));
      }
    }
  }
}
