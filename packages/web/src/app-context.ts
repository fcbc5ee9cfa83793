import { createContext } from 'preact';
import { useContext } from 'preact/hooks';
import type { ApiClient } from './api/client.js';
import type { LiveUpdates } from './api/live.js';

export interface Operator {
  name: string;
  scope: 'admin' | 'read-only';
  /** The API token this session was opened with. */
  tokenId: string;
}

/** What every view needs, passed down once instead of held in module globals. */
export interface AppContext {
  api: ApiClient;
  live: LiveUpdates;
  operator: Operator;
  csrfToken: string;
  /** Read-only tokens see everything and get no write controls. */
  canWrite: boolean;
  /** Charts (canvas) redraw in the theme's colours when it changes. */
  theme: 'light' | 'dark';
}

export const AppContextValue = createContext<AppContext | undefined>(undefined);

export function useApp(): AppContext {
  const context = useContext(AppContextValue);
  if (context === undefined) throw new Error('useApp outside the signed-in console');
  return context;
}
