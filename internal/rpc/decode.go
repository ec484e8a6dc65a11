package rpc

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
)

// DecodeStrict decodes one JSON value from data into v, refusing what encoding/json lets
// through: an unknown field, a key that matches a field only case-insensitively
// ({"Name":"b"} does not set "name"), a key given twice at the same level (anywhere, also
// inside free-form values), a struct target that is not a JSON object (null included), and
// anything but whitespace after the value. root names the value in error messages
// ("params"); every error is a bad_request *ErrorResponse naming the offending field.
//
// encoding/json's Decoder matches keys case-insensitively and keeps the last of duplicate
// keys, so the check walks the token stream against the target type first and only then
// decodes; the walk is linear in the input.
func DecodeStrict(data []byte, v any) error {
	return decodeStrict(data, v, "")
}

// DecodeParams decodes a method's params strictly (see DecodeStrict). Absent or null
// params leave v untouched: they mean "all defaults".
func DecodeParams(raw json.RawMessage, v any) error {
	if isNull(raw) {
		return nil
	}
	return decodeStrict(raw, v, "params")
}

// NoParams refuses params for a method that takes none; only absent, null or {} pass, so
// a client never believes an ignored argument had an effect.
func NoParams(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var empty struct{}
	if decodeStrict(raw, &empty, "params") != nil {
		v := string(bytes.TrimSpace(raw))
		if len(v) > 128 {
			v = v[:128] + "…"
		}
		return BadRequest("params: this method takes no params (got %s)", v)
	}
	return nil
}

func isNull(raw []byte) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

func decodeStrict(data []byte, v any, root string) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("DecodeStrict needs a non-nil pointer, got %T", v)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	w := walker{dec: dec}
	if err := w.top(rv.Type().Elem(), root); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return BadRequest("%strailing data after the JSON value", at(root))
	}
	dec = json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return BadRequest("%s", describeDecodeError(err, root))
	}
	return nil
}

// at prefixes a message with the field it is about ("params.vm: "), nothing at the top.
func at(path string) string {
	if path == "" {
		return ""
	}
	return path + ": "
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func describeDecodeError(err error, root string) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("%smust be %s (got a JSON %s)", at(join(root, te.Field)), describeType(te.Type), te.Value)
	}
	return fmt.Sprintf("%smalformed JSON: %v", at(root), err)
}

func describeType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer in range"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	}
	return t.String()
}

// walker checks the token stream against a Go type before encoding/json decodes it.
type walker struct {
	dec   *json.Decoder
	depth int
}

// maxDepth bounds nesting: the walk recurses per level, and no banger message nests
// deeper than a few levels, so a line of a million '[' costs nothing.
const maxDepth = 64

var (
	unmarshalerType     = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// top checks the outermost value: a struct target must be given an object.
func (w *walker) top(t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() == reflect.Struct && !custom(t) {
		tok, err := w.token(path)
		if err != nil {
			return err
		}
		if tok != json.Delim('{') {
			return BadRequest("%smust be a JSON object (got %s)", at(path), describeToken(tok))
		}
		return w.object(t, path)
	}
	return w.value(t, path)
}

func (w *walker) token(path string) (json.Token, error) {
	tok, err := w.dec.Token()
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, BadRequest("%smalformed JSON: %v", at(path), err)
	}
	return tok, nil
}

// custom reports whether t decodes itself, so its inner keys are not checked against fields.
func custom(t reflect.Type) bool {
	pt := reflect.PointerTo(t)
	return t.Implements(unmarshalerType) || pt.Implements(unmarshalerType) ||
		t.Implements(textUnmarshalerType) || pt.Implements(textUnmarshalerType)
}

// value checks one value of type t (nil t: free-form, only duplicate keys are checked).
func (w *walker) value(t reflect.Type, path string) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && (custom(t) || t.Kind() == reflect.Interface) {
		t = nil
	}
	tok, err := w.token(path)
	if err != nil {
		return err
	}
	if tok == json.Delim('{') || tok == json.Delim('[') {
		if w.depth++; w.depth > maxDepth {
			return BadRequest("%snested deeper than %d levels", at(path), maxDepth)
		}
		defer func() { w.depth-- }()
	}
	switch tok {
	case json.Delim('{'):
		if t != nil && t.Kind() == reflect.Struct {
			return w.object(t, path)
		}
		var elem reflect.Type
		if t != nil && t.Kind() == reflect.Map {
			elem = t.Elem()
		}
		return w.mapObject(elem, path)
	case json.Delim('['):
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; w.dec.More(); i++ {
			if err := w.value(elem, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		_, err := w.token(path)
		return err
	}
	return nil
}

// object checks the members of an object decoded into struct t; the opening '{' is read.
func (w *walker) object(t reflect.Type, path string) error {
	fields := fieldsOf(t)
	seen := map[string]bool{}
	for w.dec.More() {
		key, err := w.key(path, seen)
		if err != nil {
			return err
		}
		ft, ok := fields[key]
		if !ok {
			return unknownField(join(path, key), key, fields)
		}
		if err := w.value(ft, join(path, key)); err != nil {
			return err
		}
	}
	_, err := w.token(path)
	return err
}

// mapObject checks an object whose keys are free (a map or a free-form value).
func (w *walker) mapObject(elem reflect.Type, path string) error {
	seen := map[string]bool{}
	for w.dec.More() {
		key, err := w.key(path, seen)
		if err != nil {
			return err
		}
		if err := w.value(elem, join(path, key)); err != nil {
			return err
		}
	}
	_, err := w.token(path)
	return err
}

func (w *walker) key(path string, seen map[string]bool) (string, error) {
	tok, err := w.token(path)
	if err != nil {
		return "", err
	}
	key, ok := tok.(string)
	if !ok {
		return "", BadRequest("%smalformed JSON: object key %v is not a string", at(path), tok)
	}
	if seen[key] {
		return "", BadRequest("%s: duplicate key %q", join(path, key), key)
	}
	seen[key] = true
	return key, nil
}

func unknownField(field, key string, fields map[string]reflect.Type) error {
	for name := range fields {
		if strings.EqualFold(name, key) {
			return BadRequest("%s: unknown field (keys are case-sensitive; did you mean %q?)", field, name)
		}
	}
	return BadRequest("%s: unknown field", field)
}

func describeToken(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case json.Delim:
		if v == '[' {
			return "an array"
		}
		return string(v)
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	}
	return fmt.Sprint(tok)
}

var fieldCache sync.Map // reflect.Type → map[string]reflect.Type

// fieldsOf returns the JSON member names of struct t with their types, the way
// encoding/json names them: the tag's name, else the Go name; "-" skipped; untagged
// embedded structs promote their fields (an outer name wins over a promoted one).
func fieldsOf(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	collectFields(t, m, map[reflect.Type]bool{})
	fieldCache.Store(t, m)
	return m
}

func collectFields(t reflect.Type, m map[string]reflect.Type, visiting map[reflect.Type]bool) {
	if visiting[t] {
		return
	}
	visiting[t] = true
	var promoted []reflect.Type
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				promoted = append(promoted, ft)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	for _, pt := range promoted {
		inner := map[string]reflect.Type{}
		collectFields(pt, inner, visiting)
		for k, v := range inner {
			if _, ok := m[k]; !ok {
				m[k] = v
			}
		}
	}
}
