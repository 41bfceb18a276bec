/**
 * What the REST API returns, by the names the sidebar uses. The shapes are
 * generated from the server's `openapi.yaml` into `openapi.ts` by
 * `jlpm build:types`, which every build and test run first: a field the
 * server adds, renames or drops changes these types, and `tsc` says where the
 * sidebar must follow.
 */
import { components } from './openapi';

type Schemas = components['schemas'];

export type IJob = Schemas['Job'];
export type IJobActions = Schemas['JobActions'];
export type IJobAction = Schemas['JobAction'];
export type IJobCheckpoint = Schemas['JobCheckpoint'];
export type IJobDescription = Schemas['JobDescription'];
export type IPlacementSlot = Schemas['PlacementSlot'];
export type IPlacementGpu = Schemas['PlacementGpu'];
/** A job's latest migration or resume; the schema's `Migration` is nullable. */
export type IMigration = NonNullable<Schemas['Migration']>;
export type IMigrationPhase = Schemas['MigrationPhase'];
export type IMigrationStep = Schemas['MigrationStep'];
export type StepStatus = IMigrationStep['status'];
export type MigrationState = IMigration['state'];
export type ICheckpointInfo = NonNullable<IJobCheckpoint['latest']>;
export type ICheckpointRequest = NonNullable<IJobCheckpoint['request']>;
export type ICluster = Schemas['Cluster'];
export type IClusterNode = Schemas['ClusterNode'];
export type IClusterGpu = Schemas['ClusterGpu'];
export type ILogLine = Schemas['LogLine'];
export type JobState = Schemas['JobState'];

/**
 * Every job state, in the order the state filter lists them. A Record, so
 * that `tsc` fails when the schema gains a state this list lacks.
 */
const STATE_ORDER: Record<JobState, number> = {
  queued: 0,
  starting: 1,
  running: 2,
  succeeded: 3,
  failed: 4,
  cancelled: 5,
  preempted: 6
};

export const JOB_STATES = (Object.keys(STATE_ORDER) as JobState[]).sort(
  (a, b) => STATE_ORDER[a] - STATE_ORDER[b]
);
