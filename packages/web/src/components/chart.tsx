import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import { useApp } from '../app-context.js';

export interface ChartSeries {
  label: string;
  /** Epoch seconds, ascending, shared by all series of a chart. */
  values: (number | null)[];
}

const PALETTE = ['#3b82f6', '#f97316', '#10b981', '#a855f7', '#ef4444', '#eab308'];

/** A time-series chart (uPlot, canvas): one per metric, redrawn when its data changes. */
export function TimeChart({
  title,
  times,
  series,
  unit,
  range,
}: {
  title: string;
  times: number[];
  series: ChartSeries[];
  unit?: string;
  /** The time window shown (epoch seconds), so a few points sit where they belong instead of filling it. */
  range?: [number, number];
}) {
  const container = useRef<HTMLDivElement>(null);
  const { theme } = useApp();
  useEffect(() => {
    const element = container.current;
    if (element === null) return;
    const width = Math.max(280, element.clientWidth || 480);
    // Canvas cannot use CSS variables or currentColor; these match --text in styles.css. (Read from the theme,
    // not the computed style: this effect runs before the shell applies a new theme to the document.)
    const ink = theme === 'dark' ? '#e6edf3' : '#1b1f24';
    const grid = { stroke: 'rgba(128, 128, 128, 0.25)' };
    const plot = new uPlot(
      {
        width,
        height: 200,
        title,
        ...(range !== undefined ? { scales: { x: { time: true, range: () => range } } } : {}),
        series: [
          {},
          ...series.map((s, index) => ({
            label: s.label,
            stroke: PALETTE[index % PALETTE.length] ?? '#3b82f6',
            width: 2,
            ...(unit !== undefined
              ? { value: (_: uPlot, v: number | null) => (v === null ? '–' : `${v} ${unit}`) }
              : {}),
          })),
        ],
        axes: [
          { stroke: ink, grid, ticks: grid },
          { stroke: ink, grid, ticks: grid },
        ],
      },
      [times, ...series.map((s) => s.values)] as uPlot.AlignedData,
      element,
    );
    return () => plot.destroy();
  }, [title, times, series, unit, range?.[0], range?.[1], theme]);
  return (
    <div
      class="chart"
      ref={container}
      role="img"
      aria-label={`${title} chart: ${describeSeries(series, unit)}`}
      data-points={times.length}
    />
  );
}

/** What a screen reader gets instead of the canvas: each series' latest, lowest and highest value. */
export function describeSeries(series: ChartSeries[], unit: string | undefined): string {
  const withUnit = (value: number) => (unit !== undefined ? `${value} ${unit}` : String(value));
  return series
    .map((s) => {
      const values = s.values.filter((v): v is number => v !== null);
      if (values.length === 0) return `${s.label}: no values`;
      return `${s.label}: latest ${withUnit(values[values.length - 1] ?? 0)}, min ${withUnit(Math.min(...values))}, max ${withUnit(Math.max(...values))}`;
    })
    .join('; ');
}
