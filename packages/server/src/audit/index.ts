export {
  accessKeyActor,
  deviceActorOf,
  FleetEventLog,
  LOCAL_ACTOR,
  operatorActorOf,
  type Actor,
  type FleetEvent,
} from './fleet-events.js';
