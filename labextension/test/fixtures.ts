/** The jobs, migrations and the cluster the tests render, shaped as the server sends them. */
import { ICluster, IJob, IJobActions, IMigration } from '../src/types';

/** Every action allowed: a running job that listens for checkpoints. */
export const ALLOWED: IJobActions = {
  cancel: { allowed: true, reason: null },
  checkpoint: { allowed: true, reason: null },
  migrate: { allowed: true, reason: null }
};

export function job(overrides: Partial<IJob> = {}): IJob {
  return {
    id: '7',
    name: 'mnist',
    owner: 'ada',
    kind: 'training',
    state: 'running',
    reason: null,
    priority: 'normal',
    qos: 'normal',
    preemptible: false,
    gpus: 2,
    replicas: 2,
    gpus_per_replica: 1,
    queue_position: null,
    placement: null,
    stopping: false,
    restarts: 0,
    attempt: 0,
    exit_codes: null,
    submitted_at: new Date(Date.now() - 90_000).toISOString(),
    started_at: null,
    finished_at: null,
    elapsed_s: null,
    description: {
      template: 'single',
      framework: 'none',
      replicas: 2,
      roles: [],
      command: ['python', 'main.py'],
      env: {},
      files: [],
      network: 'host',
      ports: [],
      image: null
    },
    migration: null,
    checkpoint: { listening: false, copied: null, latest: null, request: null },
    datasets: [],
    staging: null,
    phase: null,
    actions: ALLOWED,
    spec: {
      kind: 'training',
      gpus: 2,
      cpus_per_replica: 1,
      memory_mb_per_replica: 1024,
      priority: 'normal',
      preemptible: false,
      max_restarts: 0
    },
    ...overrides
  };
}

/**
 * A migration in its third phase, transferring for 30 s at NOW, with the
 * steps the server computes for it (views.migration_steps).
 */
export function migration(overrides: Partial<IMigration> = {}): IMigration {
  return {
    id: 1,
    kind: 'migrate',
    reason: 'requested by ada',
    state: 'transferring',
    from: ['node-0'],
    to: ['node-1'],
    checkpoint: 'ckpt-00000004.0',
    error: null,
    bytes: null,
    phases: [
      {
        phase: 'checkpointing',
        started_at: '2026-01-01T00:09:00Z',
        finished_at: '2026-01-01T00:09:02.500Z',
        duration_s: 2.5,
        bytes: 3 * 1024 ** 3
      },
      {
        phase: 'stopping',
        started_at: '2026-01-01T00:09:02.500Z',
        finished_at: '2026-01-01T00:09:04Z',
        duration_s: 1.5,
        bytes: null
      },
      {
        phase: 'transferring',
        started_at: '2026-01-01T00:09:30Z',
        finished_at: null,
        duration_s: null,
        bytes: null
      }
    ],
    steps: [
      { phase: 'checkpointing', status: 'done', duration_s: 2.5, bytes: 3 * 1024 ** 3 },
      { phase: 'stopping', status: 'done', duration_s: 1.5, bytes: null },
      { phase: 'transferring', status: 'active', duration_s: 30, bytes: null },
      { phase: 'restoring', status: 'pending', duration_s: null, bytes: null }
    ],
    started_at: '2026-01-01T00:09:00Z',
    finished_at: null,
    duration_s: null,
    ...overrides
  };
}

export const cluster: ICluster = {
  executor: 'local',
  recovering: null,
  simulated: true,
  gpus_total: 4,
  gpus_free: 2,
  nodes: [
    {
      name: 'node-0',
      cpus: 4,
      memory_mb: 1024,
      labels: {},
      gpus: [
        { index: 0, uuid: 'SIM-0', model: 'simulated', memory_mb: 0, simulated: true, job_id: '7', rank: 0 },
        { index: 1, uuid: 'SIM-1', model: 'simulated', memory_mb: 0, simulated: true, job_id: '7', rank: 1 }
      ]
    },
    {
      name: 'node-1',
      cpus: 4,
      memory_mb: 1024,
      labels: {},
      gpus: [
        { index: 0, uuid: 'GPU-a', model: 'H100', memory_mb: 80000, simulated: false, job_id: null, rank: null, utilization_pct: 40, memory_used_mb: 20000 },
        { index: 1, uuid: 'GPU-b', model: 'H100', memory_mb: 80000, simulated: false, job_id: null, rank: null }
      ]
    }
  ]
};
