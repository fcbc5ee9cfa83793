import { useCallback, useState } from 'preact/hooks';

export interface Action {
  /** The last failure's message, shown next to the control that caused it; cleared by a success. */
  error: string | undefined;
  setError(message: string | undefined): void;
  /** Runs a write; a thrown error (the server's message, via `must`) becomes `error`. */
  run(action: () => Promise<void>): Promise<void>;
}

export function useAction(): Action {
  const [error, setError] = useState<string | undefined>();
  const run = useCallback(async (action: () => Promise<void>) => {
    try {
      await action();
      setError(undefined);
    } catch (failure) {
      setError(failure instanceof Error ? failure.message : String(failure));
    }
  }, []);
  return { error, setError, run };
}

/**
 * A form's submit handler for a write: `write` gets the form's fields and runs as `action` (its thrown error is
 * shown, and the form keeps what was typed); after a success the form is cleared.
 */
export function submitForm(action: Action, write: (form: FormData) => Promise<void>) {
  return async (event: SubmitEvent & { currentTarget: HTMLFormElement }) => {
    event.preventDefault();
    const formElement = event.currentTarget;
    const form = new FormData(formElement);
    await action.run(async () => {
      await write(form);
      formElement.reset();
    });
  };
}
