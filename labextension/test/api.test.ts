/**
 * The calls the sidebar makes, against a stand-in for JupyterLab's server
 * connection: path, method and body.
 */
const requests: { url: string; init: RequestInit }[] = [];
let reply: { status: number; body: unknown } = { status: 202, body: { id: '7' } };

jest.mock('@jupyterlab/coreutils', () => ({
  URLExt: { join: (...parts: string[]) => parts.join('/').replace(/\/+/g, '/') }
}));
jest.mock('@jupyterlab/services', () => ({
  ServerConnection: {
    makeSettings: () => ({ baseUrl: '/base' }),
    makeRequest: async (url: string, init: RequestInit) => {
      requests.push({ url, init });
      return {
        ok: reply.status < 400,
        status: reply.status,
        statusText: 'status text',
        json: async () => reply.body
      };
    }
  }
}));

import { AIGridError, cancelJob, checkpointJob, migrateJob } from '../src/api';

beforeEach(() => {
  requests.length = 0;
  reply = { status: 202, body: { id: '7', state: 'running' } };
});

describe('checkpointJob', () => {
  it('POSTs an empty object to the job’s checkpoint and returns the job', async () => {
    expect(await checkpointJob('7')).toEqual({ id: '7', state: 'running' });
    expect(requests).toEqual([
      { url: '/base/aigrid/api/jobs/7/checkpoint', init: { method: 'POST', body: '{}' } }
    ]);
  });
});

describe('migrateJob', () => {
  it('names the node only when one is given', async () => {
    await migrateJob('7');
    await migrateJob('7', 'node-1');
    await migrateJob('7', '');
    expect(requests.map(r => [r.url, r.init.method, r.init.body])).toEqual([
      ['/base/aigrid/api/jobs/7/migrate', 'POST', '{}'],
      ['/base/aigrid/api/jobs/7/migrate', 'POST', '{"node":"node-1"}'],
      ['/base/aigrid/api/jobs/7/migrate', 'POST', '{}']
    ]);
  });

  it('escapes the job id in the path', async () => {
    await migrateJob('a/b?c');
    expect(requests[0].url).toBe('/base/aigrid/api/jobs/a%2Fb%3Fc/migrate');
  });

  it('turns a refusal into an AIGridError with its message, field and status', async () => {
    reply = { status: 400, body: { message: 'unknown node nowhere', field: 'node' } };
    const error = await migrateJob('7', 'nowhere').catch(e => e);
    expect(error).toBeInstanceOf(AIGridError);
    expect(error.message).toBe('unknown node nowhere');
    expect(error.field).toBe('node');
    expect(error.status).toBe(400);
    reply = { status: 409, body: { message: 'the job does not listen for checkpoints', field: null } };
    await expect(checkpointJob('7')).rejects.toThrow('the job does not listen for checkpoints');
  });
});

describe('cancelJob', () => {
  it('DELETEs the job', async () => {
    await cancelJob('7');
    expect(requests[0]).toEqual({ url: '/base/aigrid/api/jobs/7', init: { method: 'DELETE' } });
  });
});
