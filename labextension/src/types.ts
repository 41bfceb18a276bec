/** What the REST API returns, as far as the sidebar reads it. */

export interface IPlacementGpu {
  index: number;
  uuid: string | null;
  model: string | null;
  simulated: boolean | null;
}

export interface IPlacementSlot {
  rank: number;
  node: string;
  local_rank: number;
  gpus: IPlacementGpu[];
}

/** The steps of a migration, in the order the master runs them. */
export const MIGRATION_PHASES = ['checkpointing', 'stopping', 'transferring', 'restoring'] as const;

export type MigrationPhaseName = (typeof MIGRATION_PHASES)[number];

/** A migration's state: the phase it is in, or how it ended. */
export type MigrationState = MigrationPhaseName | 'done' | 'failed';

export interface IMigrationPhase {
  phase: MigrationPhaseName;
  started_at: string;
  /** null while the phase runs. */
  finished_at: string | null;
  duration_s: number | null;
  /** What the phase wrote or moved, if it measures that. */
  bytes: number | null;
}

export interface IMigration {
  /** 1, 2, ... per job. */
  id: number;
  /** "resume": a restart from a checkpoint (after a failure or a preemption). */
  kind: 'migrate' | 'resume';
  reason: string | null;
  state: MigrationState;
  /** The job's nodes before and after. */
  from: string[];
  to: string[];
  /** The checkpoint moved or restored. */
  checkpoint: string | null;
  /** In order; the last one may still be running. */
  phases: IMigrationPhase[];
  /** What the migration moved in all, if the server says. */
  bytes?: number | null;
  /** Why it failed (state "failed"). */
  error: string | null;
  started_at: string;
  finished_at: string | null;
}

export interface ICheckpointInfo {
  name: string;
  step: number | null;
  bytes: number;
  /** How long writing it took, if the server says. */
  seconds?: number | null;
  at: string;
}

export interface ICheckpointRequest {
  id: string;
  state: 'pending' | 'written' | 'timeout';
  requested_at: string;
  reason: string | null;
}

export interface IJobCheckpoint {
  /** The job's ranks call runtime.should_checkpoint(): checkpoint and migrate are possible. */
  listening: boolean;
  latest: ICheckpointInfo | null;
  request: ICheckpointRequest | null;
}

export interface IJob {
  id: string;
  name: string;
  owner: string;
  kind: string;
  state: string;
  reason: string | null;
  priority: string;
  qos: string;
  preemptible: boolean;
  gpus: number;
  replicas: number;
  queue_position: number | null;
  placement: IPlacementSlot[] | null;
  stopping: boolean;
  restarts: number;
  attempt: number;
  submitted_at: string;
  started_at: string | null;
  finished_at: string | null;
  elapsed_s: number | null;
  /** The job's latest migration or resume (restart from a checkpoint); null if none yet. */
  migration: IMigration | null;
  /** Whether the job can checkpoint, its latest checkpoint and request (servers since issue 5). */
  checkpoint?: IJobCheckpoint | null;
  /** The rendered job description: its template and the image it runs in (if any). */
  description?: {
    template: string;
    image: { id: string | null; ref: string } | null;
  };
}

export interface IClusterGpu {
  index: number;
  uuid: string;
  model: string;
  memory_mb: number;
  simulated: boolean;
  job_id: string | null;
  rank: number | null;
  utilization_pct?: number;
  memory_used_mb?: number;
}

export interface IClusterNode {
  name: string;
  cpus: number;
  memory_mb: number;
  gpus: IClusterGpu[];
}

export interface ICluster {
  executor: string;
  simulated: boolean;
  gpus_total: number;
  gpus_free: number;
  nodes: IClusterNode[];
}

export interface ILogLine {
  rank: number;
  stream: 'stdout' | 'stderr';
  line: string;
}

export const JOB_STATES = [
  'queued',
  'starting',
  'running',
  'succeeded',
  'failed',
  'cancelled',
  'preempted'
];
