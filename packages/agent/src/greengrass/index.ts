export {
  COMPONENT_PARAMETERS,
  COMPONENT_PARAMETER_NAMES,
  ComponentConfigurationSchema,
  ComponentParameterError,
  defaultComponentConfiguration,
  renderAgentConfig,
  type ComponentConfiguration,
  type ComponentParameter,
  type RenderContext,
  type RenderedConfig,
} from './component-parameters.js';
