// The example system in Go: one program that is orders, users or inventory depending on the
// name it is run as (build it three times, or link it under three names), so that each process
// has its own service name. net/http for serving and calling, lib/pq for PostgreSQL.
// No tracing code, on purpose: ztrace sees every request and query from the kernel.
//
// Environment: PORT (HTTP port), PGHOST, PGPORT, PGUSER (the database server; each service has
// its own database), and for orders USERS_URL and INVENTORY_URL; FANOUT=parallel makes orders call
// users and inventory at the same time, each from a goroutine of its own.
package main

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "github.com/lib/pq"
)

var (
	db     *sql.DB
	client = &http.Client{Timeout: 10 * time.Second}
)

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// id parses the last path segment after prefix, or writes a 404.
func id(w http.ResponseWriter, r *http.Request, prefix string) (int, bool) {
	n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, prefix))
	if err != nil || !strings.HasPrefix(r.URL.Path, prefix) {
		reply(w, http.StatusNotFound, map[string]string{"error": "not found"})
		return 0, false
	}
	return n, true
}

func reply(w http.ResponseWriter, status int, body interface{}) {
	data, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(status)
	w.Write(data)
}

func getJSON(url string, into interface{}) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(into)
}

func orders(w http.ResponseWriter, r *http.Request) {
	oid, ok := id(w, r, "/orders/")
	if !ok {
		return
	}
	var userID, itemID, quantity int
	err := db.QueryRow("SELECT user_id, item_id, quantity FROM orders WHERE id = $1", oid).Scan(&userID, &itemID, &quantity)
	if err == sql.ErrNoRows {
		reply(w, http.StatusNotFound, map[string]string{"error": "no such order"})
		return
	} else if err != nil {
		reply(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
		return
	}
	var user, stock map[string]interface{}
	userURL := fmt.Sprintf("%s/profiles/%d", env("USERS_URL", "http://127.0.0.1:8082"), userID)
	stockURL := fmt.Sprintf("%s/stock/%d", env("INVENTORY_URL", "http://127.0.0.1:8083"), itemID)
	var userErr, stockErr error
	if os.Getenv("FANOUT") == "parallel" {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); userErr = getJSON(userURL, &user) }()
		go func() { defer wg.Done(); stockErr = getJSON(stockURL, &stock) }()
		wg.Wait()
	} else {
		userErr = getJSON(userURL, &user)
		if userErr == nil {
			stockErr = getJSON(stockURL, &stock)
		}
	}
	for _, err := range []error{userErr, stockErr} {
		if err != nil {
			reply(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
			return
		}
	}
	reply(w, http.StatusOK, map[string]interface{}{"id": oid, "quantity": quantity, "user": user, "stock": stock})
}

func users(w http.ResponseWriter, r *http.Request) {
	uid, ok := id(w, r, "/profiles/")
	if !ok {
		return
	}
	var name, email string
	err := db.QueryRow("SELECT name, email FROM users WHERE id = $1", uid).Scan(&name, &email)
	if err == sql.ErrNoRows {
		reply(w, http.StatusNotFound, map[string]string{"error": "no such user"})
		return
	} else if err != nil {
		reply(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
		return
	}
	reply(w, http.StatusOK, map[string]interface{}{"id": uid, "name": name, "email": email})
}

func inventory(w http.ResponseWriter, r *http.Request) {
	item, ok := id(w, r, "/stock/")
	if !ok {
		return
	}
	var onHand, reserved int
	err := db.QueryRow("SELECT on_hand FROM stock WHERE item_id = $1", item).Scan(&onHand)
	if err == sql.ErrNoRows {
		reply(w, http.StatusNotFound, map[string]string{"error": "no such item"})
		return
	} else if err != nil {
		reply(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
		return
	}
	if err := db.QueryRow("SELECT count(*) FROM reservations WHERE item_id = $1", item).Scan(&reserved); err != nil {
		reply(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
		return
	}
	reply(w, http.StatusOK, map[string]interface{}{"item": item, "on_hand": onHand, "reserved": reserved})
}

func main() {
	service := filepath.Base(os.Args[0])
	routes := map[string]struct {
		prefix  string
		handler http.HandlerFunc
	}{
		"orders":    {"/orders/", orders},
		"users":     {"/profiles/", users},
		"inventory": {"/stock/", inventory},
	}
	route, known := routes[service]
	if !known {
		log.Fatalf("run me as orders, users or inventory, not %q", service)
	}
	var err error
	// Connection settings from PGHOST, PGPORT, PGUSER; the database is the service's own.
	db, err = sql.Open("postgres", "dbname="+service+" sslmode=disable")
	if err != nil {
		log.Fatal(err)
	}
	db.SetMaxIdleConns(16)
	mux := http.NewServeMux()
	mux.Handle(route.prefix, route.handler)
	listener, err := net.Listen("tcp", "127.0.0.1:"+env("PORT", "0"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %d\n", listener.Addr().(*net.TCPAddr).Port)
	log.Fatal(http.Serve(listener, mux))
}
