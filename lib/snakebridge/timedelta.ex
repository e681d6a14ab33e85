defmodule SnakeBridge.Timedelta do
  @moduledoc """
  A Python `datetime.timedelta` (or `pandas.Timedelta`, or a numpy
  `timedelta64`), as a whole number of microseconds.

  Sent back to Python it becomes a `timedelta` again. `System.convert_time_unit/3`
  and `DateTime.add/3` take the microseconds as they are:

      DateTime.add(datetime, delta.microseconds, :microsecond)
  """

  @enforce_keys [:microseconds]
  defstruct [:microseconds]

  @type t :: %__MODULE__{microseconds: integer()}
end
