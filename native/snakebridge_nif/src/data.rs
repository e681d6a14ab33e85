//! The data kinds both ways: `%SnakeBridge.Tensor{}`, `Date`, `Time`,
//! `NaiveDateTime`, `DateTime`, `%Decimal{}` (recognised by name: Decimal is
//! not a dependency), `%SnakeBridge.Timedelta{}`, `%SnakeBridge.Arrow{}`,
//! `%SnakeBridge.Construct{}`, and structs a Python encoder made. See the
//! protocol's `value` module for their wire forms.

use rustler::types::tuple::{get_tuple, make_tuple};
use rustler::{Atom, Binary, Encoder, Env, NewBinary, Term};
use snakebridge_protocol::value::{self as wire, tensor_len, Dtype};
use snakebridge_protocol::DecodeError;

use crate::atoms;
use crate::encode_error::EncodeError;
use crate::errors::atom_map;

mod names {
    rustler::atoms! {
        calendar,
        calendar_iso = "Elixir.Calendar.ISO",
        date = "Elixir.Date",
        time = "Elixir.Time",
        naive_datetime = "Elixir.NaiveDateTime",
        datetime = "Elixir.DateTime",
        decimal = "Elixir.Decimal",
        tensor_struct = "Elixir.SnakeBridge.Tensor",
        arrow = "Elixir.SnakeBridge.Arrow",
        timedelta = "Elixir.SnakeBridge.Timedelta",
        construct = "Elixir.SnakeBridge.Construct",
        year,
        month,
        day,
        hour,
        minute,
        second,
        microsecond,
        utc_offset,
        std_offset,
        time_zone,
        zone_abbr,
        sign,
        coef,
        exp,
        shape,
        microseconds,
        to,
        table,
        pandas,
        function,
        args,
        kwargs,
        u,
        s,
        f,
        bf,
        c,
        nan = "NaN",
        inf,
    }
}

use names::*;

// Host → worker ----------------------------------------------------------

/// What the data kinds need of the encoder that meets them: where to
/// write, and how to write what they hold (an integer of any size, a
/// Construct's arguments).
pub trait Sink {
    fn out(&mut self) -> &mut Vec<u8>;
    /// `bytes` of the output were copied whole from a binary.
    fn copied(&mut self, bytes: usize);
    fn value(&mut self, term: Term, depth: usize) -> Result;
    fn list(&mut self, term: Term, depth: usize) -> Result;
    fn kwargs(&mut self, term: Term) -> Result;
    fn check_budget(&self) -> Result;
}

type Result<T = ()> = std::result::Result<T, EncodeError>;

fn bad(what: &str) -> EncodeError {
    EncodeError::Unsupported { what: what.to_owned(), path: Vec::new() }
}

fn field<'a>(term: Term<'a>, key: Atom, what: &str) -> Result<Term<'a>> {
    term.map_get(key).map_err(|_| bad(what))
}

fn int_field(term: Term, key: Atom, what: &str) -> Result<i64> {
    field(term, key, what)?.decode().map_err(|_| bad(what))
}

/// Writes `term`, a struct of `module`, if it is one of the data kinds;
/// `None` for any other struct.
pub fn encode<'a>(enc: &mut impl Sink, module: Term<'a>, term: Term<'a>, depth: usize) -> Option<Result> {
    let env = term.get_env();
    let is = |atom: Atom| module == atom.to_term(env);
    let result = if is(tensor_struct()) {
        encode_tensor(enc, term)
    } else if is(date()) {
        calendar_fields(enc, term, "Date", wire::EXT_DATE, &[year(), month(), day()], false)
    } else if is(time()) {
        calendar_fields(enc, term, "Time", wire::EXT_TIME, &[hour(), minute(), second()], true)
    } else if is(naive_datetime()) {
        let fields = [year(), month(), day(), hour(), minute(), second()];
        calendar_fields(enc, term, "NaiveDateTime", wire::EXT_NAIVE_DATETIME, &fields, true)
    } else if is(datetime()) {
        encode_datetime(enc, term)
    } else if is(decimal()) {
        encode_decimal(enc, term)
    } else if is(timedelta()) {
        write_tagged(enc, wire::EXT_TIMEDELTA, 1, |enc| {
            let us = field(term, microseconds(), "a malformed SnakeBridge.Timedelta")?;
            if !us.is_integer() {
                return Err(bad("a SnakeBridge.Timedelta whose :microseconds is not an integer"));
            }
            enc.value(us, depth + 1)
        })
    } else if is(arrow()) {
        encode_arrow(enc, term)
    } else if is(construct()) {
        encode_construct(enc, term, depth)
    } else {
        return None;
    };
    Some(result.and_then(|()| enc.check_budget()))
}

fn write_tagged<S: Sink>(enc: &mut S, ext: i8, len: usize, fields: impl FnOnce(&mut S) -> Result) -> Result {
    let start = wire::begin_tagged(enc.out(), ext, len)?;
    fields(enc)?;
    wire::finish_container(enc.out(), start)?;
    Ok(())
}

/// Integer fields, then (`with_us`) the microseconds of `{value, precision}`.
fn calendar_fields(enc: &mut impl Sink, term: Term, type_name: &str, ext: i8, keys: &[Atom], with_us: bool) -> Result {
    let env = term.get_env();
    let what = &format!("a malformed {type_name}");
    if field(term, calendar(), what)? != calendar_iso().to_term(env) {
        return Err(bad(&format!("a {type_name} in a calendar other than Calendar.ISO")));
    }
    let values = keys.iter().map(|&k| int_field(term, k, what)).collect::<Result<Vec<i64>>>()?;
    let us = if with_us { Some(microseconds_of(term, what)?) } else { None };
    write_tagged(enc, ext, values.len() + us.is_some() as usize, |enc| {
        for v in values.iter().chain(us.iter()) {
            wire::write_i64(enc.out(), *v);
        }
        Ok(())
    })
}

fn microseconds_of(term: Term, what: &str) -> Result<i64> {
    let us = field(term, microsecond(), what)?;
    match get_tuple(us).ok().as_deref() {
        Some([value, _precision]) => value.decode().map_err(|_| bad(what)),
        _ => Err(bad(what)),
    }
}

fn encode_datetime(enc: &mut impl Sink, term: Term) -> Result {
    let what = "a malformed DateTime";
    let wall = [year(), month(), day(), hour(), minute(), second()];
    let start = wire::begin_tagged(enc.out(), wire::EXT_DATETIME, 11)?;
    let env = term.get_env();
    if field(term, calendar(), what)? != calendar_iso().to_term(env) {
        return Err(bad("a DateTime in a calendar other than Calendar.ISO"));
    }
    for key in wall {
        wire::write_i64(enc.out(), int_field(term, key, what)?);
    }
    wire::write_i64(enc.out(), microseconds_of(term, what)?);
    wire::write_i64(enc.out(), int_field(term, utc_offset(), what)?);
    wire::write_i64(enc.out(), int_field(term, std_offset(), what)?);
    for key in [time_zone(), zone_abbr()] {
        let text: &str = field(term, key, what)?.decode().map_err(|_| bad(what))?;
        wire::write_str(enc.out(), text)?;
    }
    wire::finish_container(enc.out(), start)?;
    Ok(())
}

fn encode_decimal(enc: &mut impl Sink, term: Term) -> Result {
    let what = "a malformed Decimal";
    let env = term.get_env();
    let negative = match int_field(term, sign(), what)? {
        1 => false,
        -1 => true,
        _ => return Err(bad("a Decimal whose sign is not 1 or -1")),
    };
    let coefficient = field(term, coef(), what)?;
    let exponent = int_field(term, exp(), what)?;
    write_tagged(enc, wire::EXT_DECIMAL, 3, |enc| {
        wire::write_i64(enc.out(), negative as i64);
        if coefficient == nan().to_term(env) {
            wire::write_str(enc.out(), "NaN")?;
        } else if coefficient == inf().to_term(env) {
            wire::write_str(enc.out(), "inf")?;
        } else if coefficient.is_integer() && coefficient.decode::<i64>().map_or(true, |c| c >= 0) {
            enc.value(coefficient, 1)?;
        } else {
            return Err(bad("a Decimal whose coef is not a non-negative integer, :NaN or :inf"));
        }
        wire::write_i64(enc.out(), exponent);
        Ok(())
    })
}

fn encode_tensor(enc: &mut impl Sink, term: Term) -> Result {
    let what = "a malformed SnakeBridge.Tensor";
    let env = term.get_env();
    let ty = field(term, atoms::type_(), what)?;
    let (kind, bits) = match get_tuple(ty).ok().as_deref() {
        Some([kind, bits]) => (*kind, bits.decode::<u16>().unwrap_or(0)),
        _ => return Err(bad("a SnakeBridge.Tensor whose type is not an Nx type tuple such as {:f, 64}")),
    };
    let prefix = [(u(), "u"), (s(), "s"), (f(), "f"), (bf(), "bf"), (c(), "c")]
        .into_iter()
        .find(|(atom, _)| kind == atom.to_term(env))
        .map(|(_, p)| p);
    let name = prefix.map(|p| format!("{p}{bits}"));
    let Some(dtype) = name.as_deref().and_then(Dtype::parse) else {
        return Err(bad(&format!(
            "a SnakeBridge.Tensor of type {{{}, {bits}}}, which is not one of {}",
            short_atom(kind),
            Dtype::ALL.join(", ")
        )));
    };
    let shape_term = field(term, shape(), what)?;
    let shape: Vec<u64> = get_tuple(shape_term)
        .map_err(|_| bad("a SnakeBridge.Tensor whose shape is not a tuple"))?
        .iter()
        .map(|d| d.decode::<u64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("a SnakeBridge.Tensor whose shape has a dimension that is not a non-negative integer"))?;
    let data = Binary::from_term(field(term, atoms::data(), what)?)
        .map_err(|_| bad("a SnakeBridge.Tensor whose data is not a binary"))?;
    if tensor_len(dtype, &shape) != Some(data.len()) {
        return Err(bad(&format!(
            "a SnakeBridge.Tensor of type {} and shape {shape:?} with {} bytes of data instead of {}",
            name.as_deref().unwrap_or("?"),
            data.len(),
            tensor_len(dtype, &shape).map_or("too many".to_owned(), |n| n.to_string())
        )));
    }
    wire::write_tensor(enc.out(), name.as_deref().unwrap_or_default(), &shape, data.as_slice())?;
    enc.copied(data.len());
    Ok(())
}

fn short_atom(term: Term) -> String {
    term.atom_to_string().map_or_else(|_| "…".to_owned(), |a| format!(":{a}"))
}

fn encode_arrow(enc: &mut impl Sink, term: Term) -> Result {
    let what = "a malformed SnakeBridge.Arrow";
    let env = term.get_env();
    let data = Binary::from_term(field(term, atoms::data(), what)?)
        .map_err(|_| bad("a SnakeBridge.Arrow whose data is not a binary"))?;
    let target = field(term, to(), what)?;
    let target = if target == table().to_term(env) {
        "table"
    } else if target == pandas().to_term(env) {
        "pandas"
    } else {
        return Err(bad("a SnakeBridge.Arrow whose :to is not :table or :pandas"));
    };
    write_tagged(enc, wire::EXT_ARROW, 2, |enc| {
        wire::write_bin(enc.out(), data.as_slice())?;
        enc.copied(data.len());
        wire::write_str(enc.out(), target)?;
        Ok(())
    })
}

fn encode_construct(enc: &mut impl Sink, term: Term, depth: usize) -> Result {
    let what = "a malformed SnakeBridge.Construct";
    let name = |key: Atom| -> Result<String> {
        let text: &str = field(term, key, what)?.decode().map_err(|_| bad(what))?;
        Ok(text.to_owned())
    };
    let (module, function) = (name(atoms::module())?, name(function())?);
    let positional = field(term, args(), what)?;
    let keywords = field(term, kwargs(), what)?;
    write_tagged(enc, wire::EXT_CONSTRUCT, 4, |enc| {
        wire::write_str(enc.out(), &module)?;
        wire::write_str(enc.out(), &function)?;
        enc.list(positional, depth + 1)?;
        enc.kwargs(keywords)
    })
}

// Worker → host ----------------------------------------------------------

fn invalid(what: &str) -> DecodeError {
    DecodeError::Invalid(what.to_owned())
}

/// `%SnakeBridge.Tensor{}`, its data copied out of the frame once.
pub fn tensor<'a>(env: Env<'a>, dtype: Dtype, dims: &[u64], data: &[u8]) -> Term<'a> {
    let kind = match dtype.kind {
        b'u' => u(),
        b's' => s(),
        b'f' => f(),
        b'b' => bf(),
        _ => c(),
    };
    let mut bin = NewBinary::new(env, data.len());
    bin.as_mut_slice().copy_from_slice(data);
    let dims: Vec<Term<'a>> = dims.iter().map(|d| d.encode(env)).collect();
    atom_map(
        env,
        &[
            (atoms::struct_(), tensor_struct().encode(env)),
            (atoms::data(), Term::from(bin)),
            (atoms::type_(), (kind, dtype.bits).encode(env)),
            (shape(), make_tuple(env, &dims)),
        ],
    )
}

/// The term for one of the data extensions.
pub fn tagged<'a>(env: Env<'a>, ext: i8, items: Vec<Term<'a>>) -> std::result::Result<Term<'a>, DecodeError> {
    let ints = |n: usize, what: &str| -> std::result::Result<Vec<i64>, DecodeError> {
        if items.len() < n {
            return Err(invalid(what));
        }
        items[..n].iter().map(|t| t.decode::<i64>().map_err(|_| invalid(what))).collect()
    };
    let iso = calendar_iso().encode(env);
    let with_us = |us: i64| make_tuple(env, &[us.encode(env), (if us == 0 { 0 } else { 6 }).encode(env)]);
    Ok(match ext {
        wire::EXT_DATE => {
            let v = ints(3, "a malformed date")?;
            let fields = [(calendar(), iso), (year(), v[0].encode(env)), (month(), v[1].encode(env)), (day(), v[2].encode(env))];
            structure(env, date(), &fields)
        }
        wire::EXT_TIME => {
            let v = ints(4, "a malformed time")?;
            let fields = [
                (calendar(), iso),
                (hour(), v[0].encode(env)),
                (minute(), v[1].encode(env)),
                (second(), v[2].encode(env)),
                (microsecond(), with_us(v[3])),
            ];
            structure(env, time(), &fields)
        }
        wire::EXT_NAIVE_DATETIME | wire::EXT_DATETIME => {
            let v = ints(7, "a malformed datetime")?;
            let mut fields = vec![
                (calendar(), iso),
                (year(), v[0].encode(env)),
                (month(), v[1].encode(env)),
                (day(), v[2].encode(env)),
                (hour(), v[3].encode(env)),
                (minute(), v[4].encode(env)),
                (second(), v[5].encode(env)),
                (microsecond(), with_us(v[6])),
            ];
            if ext == wire::EXT_NAIVE_DATETIME {
                return Ok(structure(env, naive_datetime(), &fields));
            }
            let zone = ints(9, "a malformed datetime")?;
            let text = |i: usize| items.get(i).filter(|t| t.is_binary()).copied().ok_or_else(|| invalid("a malformed datetime"));
            fields.extend([
                (utc_offset(), zone[7].encode(env)),
                (std_offset(), zone[8].encode(env)),
                (time_zone(), text(9)?),
                (zone_abbr(), text(10)?),
            ]);
            structure(env, datetime(), &fields)
        }
        wire::EXT_TIMEDELTA => {
            let us = items.first().filter(|t| t.is_integer()).ok_or_else(|| invalid("a malformed timedelta"))?;
            structure(env, timedelta(), &[(microseconds(), *us)])
        }
        wire::EXT_DECIMAL => decimal_term(env, &items)?,
        wire::EXT_ARROW => {
            let data = items.first().filter(|t| t.is_binary()).ok_or_else(|| invalid("a malformed Arrow table"))?;
            structure(env, arrow(), &[(atoms::data(), *data), (to(), table().encode(env))])
        }
        wire::EXT_STRUCT => user_struct(env, &items)?,
        other => return Err(DecodeError::UnknownExtension(other)),
    })
}

fn structure<'a>(env: Env<'a>, module: Atom, fields: &[(Atom, Term<'a>)]) -> Term<'a> {
    let mut all = Vec::with_capacity(fields.len() + 1);
    all.push((atoms::struct_(), module.encode(env)));
    all.extend_from_slice(fields);
    atom_map(env, &all)
}

fn decimal_term<'a>(env: Env<'a>, items: &[Term<'a>]) -> std::result::Result<Term<'a>, DecodeError> {
    let what = "a malformed decimal";
    let [negative, coefficient, exponent] = items else {
        return Err(invalid(what));
    };
    let sign_value: i64 = if negative.decode::<i64>().map_err(|_| invalid(what))? == 1 { -1 } else { 1 };
    let coefficient = match coefficient.decode::<&str>() {
        Ok("NaN" | "sNaN") => nan().encode(env),
        Ok("inf") => inf().encode(env),
        Ok(_) => return Err(invalid(what)),
        Err(_) if coefficient.is_integer() => *coefficient,
        Err(_) => return Err(invalid(what)),
    };
    if !exponent.is_integer() {
        return Err(invalid(what));
    }
    Ok(structure(env, decimal(), &[(sign(), sign_value.encode(env)), (coef(), coefficient), (exp(), *exponent)]))
}

/// `%Name{fields}` when the BEAM knows the module's and every field's atom;
/// else a map with string keys and `"__struct__" => name`.
fn user_struct<'a>(env: Env<'a>, items: &[Term<'a>]) -> std::result::Result<Term<'a>, DecodeError> {
    let what = "a malformed struct";
    let [name, fields] = items else {
        return Err(invalid(what));
    };
    let name_text: &str = name.decode().map_err(|_| invalid(what))?;
    let pairs: Vec<(Term<'a>, Term<'a>)> = rustler::types::map::MapIterator::new(*fields)
        .ok_or_else(|| invalid(what))?
        .collect();
    let existing = |text: &[u8]| Atom::try_from_bytes(env, text).ok().flatten();
    let module = existing(format!("Elixir.{name_text}").as_bytes());
    let keys: Option<Vec<Atom>> = pairs
        .iter()
        .map(|(k, _)| k.decode::<Binary>().ok().and_then(|b| existing(b.as_slice())))
        .collect();
    let mut map = Term::map_new(env);
    match (module, keys) {
        (Some(module), Some(keys)) => {
            map = map.map_put(atoms::struct_(), module).map_err(|_| invalid(what))?;
            for (key, (_, value)) in keys.into_iter().zip(&pairs) {
                map = map.map_put(key, *value).map_err(|_| invalid(what))?;
            }
        }
        _ => {
            map = map.map_put("__struct__", *name).map_err(|_| invalid(what))?;
            for (key, value) in pairs {
                map = map.map_put(key, value).map_err(|_| invalid(what))?;
            }
        }
    }
    Ok(map)
}
