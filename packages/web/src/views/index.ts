import type { ComponentType } from 'preact';
import { DeploymentPage, DeploymentsPage } from './deployments-page.js';
import { DevicePage } from './device-page.js';
import { DevicesPage } from './devices-page.js';
import { ModelsPage } from './models-page.js';
import { OverviewPage } from './overview-page.js';
import { PackagingPage } from './packaging-page.js';
import { TokensPage } from './tokens-page.js';

export interface View {
  /** Hash route pattern, e.g. /devices/:device. */
  path: string;
  title: string;
  /** Shown in the navigation when set (pages reached by links only leave it out). */
  nav?: string;
  component: ComponentType<{ params: Record<string, string> }>;
  /** The server answers this page's data to admin tokens only, so read-only operators are not shown it. */
  adminOnly?: true;
}

/** Every page of the console, in navigation order. */
export const views: View[] = [
  { path: '/', title: 'Overview', nav: 'Overview', component: OverviewPage },
  { path: '/devices', title: 'Devices', nav: 'Devices', component: DevicesPage },
  { path: '/devices/:device', title: 'Device', component: DevicePage },
  { path: '/models', title: 'Models', nav: 'Models', component: ModelsPage },
  { path: '/packaging', title: 'Packaging', nav: 'Packaging', component: PackagingPage },
  { path: '/deployments', title: 'Deployments', nav: 'Deployments', component: DeploymentsPage },
  { path: '/deployments/:plan', title: 'Deployment plan', component: DeploymentPage },
  { path: '/tokens', title: 'API tokens', nav: 'Tokens', component: TokensPage, adminOnly: true },
];
