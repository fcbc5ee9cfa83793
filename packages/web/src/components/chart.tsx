import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';

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
  useEffect(() => {
    const element = container.current;
    if (element === null) return;
    const width = Math.max(280, element.clientWidth || 480);
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
        axes: [{ stroke: 'currentColor' }, { stroke: 'currentColor' }],
      },
      [times, ...series.map((s) => s.values)] as uPlot.AlignedData,
      element,
    );
    return () => plot.destroy();
  }, [title, times, series, unit, range?.[0], range?.[1]]);
  return (
    <div class="chart" ref={container} role="img" aria-label={`${title} chart`} data-points={times.length} />
  );
}
