// Package fc is fcsup's minimal stand-in for the package of the same path in aliyun's
// fc-runtime-go-sdk (Apache-2.0; not vendored, not copied): the API the fixture uses (Start,
// RegisterInitializerFunction, RegisterPreStopFunction, RegisterPreFreezeFunction) and the
// runtime-API client behaviour of the SDK's fc/runtime_api_client.go and fc/invoke_loop.go:
//   - GET http://$FC_RUNTIME_API/2020-11-11/runtime/invocation/next with a User-Agent of
//     aliyun-fc-go/<go version>; anything but 200 is an error, and the loop polls again;
//   - the request id from x-fc-request-id; x-fc-function-deadline (epoch ms) and
//     x-fc-function-timeout must parse as integers or the call is dropped unanswered;
//   - each call runs in its own goroutine while the loop polls next again at once;
//   - x-fc-function-type 1/2/3 run the registered Initializer/PreStop/PreFreeze handler;
//   - success: POST .../invocation/{id}/response, failure: POST .../{id}/error with
//     {"errorMessage", "errorType"[, "stackTrace"]}, both Content-Type application/json and
//     expecting exactly 200;
//   - "FC Invoke Start RequestId: <id>" / "FC Invoke End RequestId: <id>" (", Error:
//     Unhandled function error" on failure) on stdout, Initialize/PreStop/PreFreeze likewise.
package fc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"reflect"
	"runtime"
	"strconv"
	"time"

	"github.com/aliyun/fc-runtime-go-sdk/fccontext"
)

const apiVersion = "2020-11-11"

var hooks = map[int]interface{}{}

func RegisterInitializerFunction(h interface{}) { hooks[1] = h }
func RegisterPreStopFunction(h interface{})     { hooks[2] = h }
func RegisterPreFreezeFunction(h interface{})   { hooks[3] = h }

type errorBody struct {
	Message string `json:"errorMessage"`
	Type    string `json:"errorType"`
}

// Start runs the invoke loop; it never returns.
func Start(handler interface{}) {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	api := os.Getenv("FC_RUNTIME_API")
	if api == "" {
		log.Fatalf("expected ali FC environment variables [FC_RUNTIME_API] are not defined")
	}
	base := "http://" + api + "/" + apiVersion + "/runtime/invocation/"
	client := &http.Client{}
	ua := "aliyun-fc-go/" + runtime.Version()
	for {
		req, _ := http.NewRequest(http.MethodGet, base+"next", nil)
		req.Header.Set("User-Agent", ua)
		resp, err := client.Do(req)
		if err != nil {
			log.Printf("failed to get invoke request due to %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		payload, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			log.Printf("failed to get invoke request: status %d, %v", resp.StatusCode, err)
			continue
		}
		go func(h http.Header, payload []byte) {
			if err := handle(client, base, ua, handler, h, payload); err != nil {
				log.Printf("failed to invoke function due to %v", err)
			}
		}(resp.Header, payload)
	}
}

func handle(client *http.Client, base, ua string, handler interface{}, h http.Header, payload []byte) error {
	id := h.Get("x-fc-request-id")
	deadlineMS, err := strconv.ParseInt(h.Get("x-fc-function-deadline"), 10, 64)
	if err != nil {
		return fmt.Errorf("failed to parse contents of header: x-fc-function-deadline")
	}
	timeout, err := strconv.Atoi(h.Get("x-fc-function-timeout"))
	if err != nil {
		return fmt.Errorf("failed to parse contents of header: x-fc-function-timeout")
	}
	retry, _ := strconv.Atoi(h.Get("x-fc-retry-count"))
	fctx := &fccontext.FcContext{
		RequestID: id,
		Credentials: fccontext.Credentials{
			AccessKeyId:     h.Get("x-fc-access-key-id"),
			AccessKeySecret: h.Get("x-fc-access-key-secret"),
			SecurityToken:   h.Get("x-fc-security-token"),
		},
		Function: fccontext.Function{
			Name:    h.Get("x-fc-function-name"),
			Handler: h.Get("x-fc-function-handler"),
			Memory:  h.Get("x-fc-function-memory"),
			Timeout: timeout,
		},
		Service: fccontext.Service{
			Name:       h.Get("x-fc-service-name"),
			LogProject: h.Get("x-fc-service-logproject"),
			LogStore:   h.Get("x-fc-service-logstore"),
			Qualifier:  h.Get("x-fc-qualifier"),
			VersionId:  h.Get("x-fc-version-id"),
		},
		Region:     h.Get("x-fc-region"),
		AccountId:  h.Get("x-fc-account-id"),
		RetryCount: retry,
	}
	ctx, cancel := context.WithDeadline(context.Background(), time.UnixMilli(deadlineMS))
	defer cancel()
	ctx = fccontext.NewContext(ctx, fctx)
	kind, _ := strconv.Atoi(h.Get("x-fc-function-type"))
	label := map[int]string{1: "Initialize", 2: "PreStop", 3: "PreFreeze"}[kind]
	if label == "" {
		label, kind = "Invoke", 0
	}
	fmt.Printf("FC %s Start RequestId: %s\n", label, id)
	out, fnErr := run(ctx, kind, handler, payload)
	if fnErr != nil {
		fmt.Printf("FC %s End RequestId: %s, Error: Unhandled function error\n", label, id)
		body, _ := json.Marshal(fnErr)
		return post(client, base+id+"/error", ua, body)
	}
	fmt.Printf("FC %s End RequestId: %s\n", label, id)
	return post(client, base+id+"/response", ua, out)
}

// run calls the handler (or hook) and turns a returned error or a panic into FC's error body.
func run(ctx context.Context, kind int, handler interface{}, payload []byte) (out []byte, fnErr *errorBody) {
	defer func() {
		if r := recover(); r != nil {
			out, fnErr = nil, &errorBody{Message: fmt.Sprintf("%v", r), Type: reflect.TypeOf(r).Name()}
		}
	}()
	if kind != 0 {
		hook, ok := hooks[kind]
		if !ok {
			panic(errors.New("no lifecycle handler registered"))
		}
		reflect.ValueOf(hook).Call([]reflect.Value{reflect.ValueOf(ctx)})
		return []byte{}, nil
	}
	fn := reflect.ValueOf(handler)
	t := fn.Type()
	var args []reflect.Value
	for i := 0; i < t.NumIn(); i++ {
		in := t.In(i)
		if i == 0 && in.Implements(reflect.TypeOf((*context.Context)(nil)).Elem()) {
			args = append(args, reflect.ValueOf(ctx))
			continue
		}
		v := reflect.New(in)
		if err := json.Unmarshal(payload, v.Interface()); err != nil {
			return nil, &errorBody{Message: err.Error(), Type: reflect.TypeOf(err).Elem().Name()}
		}
		args = append(args, v.Elem())
	}
	res := fn.Call(args)
	if n := len(res); n > 0 {
		if e, ok := res[n-1].Interface().(error); ok && e != nil {
			t := reflect.TypeOf(e)
			if t.Kind() == reflect.Ptr {
				t = t.Elem()
			}
			return nil, &errorBody{Message: e.Error(), Type: t.Name()}
		}
		if n == 2 {
			b, err := json.Marshal(res[0].Interface())
			if err != nil {
				return nil, &errorBody{Message: err.Error(), Type: "Runtime.SerializationError"}
			}
			return b, nil
		}
	}
	return []byte("null"), nil
}

func post(client *http.Client, url, ua string, body []byte) error {
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewBuffer(body))
	req.Header.Set("User-Agent", ua)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("failed to POST to %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("failed to POST to %s: got unexpected status code: %d", url, resp.StatusCode)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}
