package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"banger/internal/model"
)

// metrics are bangerd's Prometheus series: how fast VMs boot and calls complete, and how
// many VMs are in each state. They live on their own registry so tests can read them.
type metrics struct {
	reg       *prometheus.Registry
	rpcTotal  *prometheus.CounterVec
	rpcTime   *prometheus.HistogramVec
	bootTime  *prometheus.HistogramVec
	fetchTime *prometheus.HistogramVec
}

func newMetrics(d *Daemon) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		rpcTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "banger_rpc_requests_total", Help: "RPC calls served, by method and wire error code (empty: success).",
		}, []string{"method", "code"}),
		rpcTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "banger_rpc_request_duration_seconds", Help: "Time to serve an RPC call (streams: until they end).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"method"}),
		bootTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "banger_vm_boot_seconds", Help: "From starting the VMM to the guest agent's first answer.",
			Buckets: []float64{0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64},
		}, []string{"vmm", "accel"}),
		fetchTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "banger_image_fetch_seconds", Help: "Time to pull or build a catalog image, by outcome.",
			Buckets: prometheus.ExponentialBuckets(0.25, 2, 10),
		}, []string{"result"}),
	}
	m.reg.MustRegister(m.rpcTotal, m.rpcTime, m.bootTime, m.fetchTime,
		&vmStateCollector{d: d}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observeRPC(method, code string, d time.Duration) {
	m.rpcTotal.WithLabelValues(method, code).Inc()
	m.rpcTime.WithLabelValues(method).Observe(d.Seconds())
}

// vmStateCollector reads VM counts from the store at scrape time, so the series can never
// disagree with `banger vm ls`.
type vmStateCollector struct{ d *Daemon }

var vmStatesDesc = prometheus.NewDesc("banger_vms", "VMs by state.", []string{"state"}, nil)

func (c *vmStateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- vmStatesDesc }

func (c *vmStateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	vms, err := c.d.store.ListVMs(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(vmStatesDesc, err)
		return
	}
	counts := map[model.VMState]int{model.VMCreated: 0, model.VMStarting: 0, model.VMRunning: 0, model.VMPaused: 0,
		model.VMStopping: 0, model.VMStopped: 0, model.VMError: 0}
	for _, vm := range vms {
		counts[vm.State]++
	}
	for state, n := range counts {
		ch <- prometheus.MustNewConstMetric(vmStatesDesc, prometheus.GaugeValue, float64(n), string(state))
	}
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// serveMetrics listens on addr and serves /metrics until ctx ends.
func (d *Daemon) serveMetrics(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listener on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", d.metrics.handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics server stopped", "error", err.Error())
		}
	}()
	d.log.Info("metrics serving", "addr", l.Addr().String())
	return nil
}
