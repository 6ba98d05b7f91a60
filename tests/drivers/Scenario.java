// The driver matrix scenario for pgJDBC (Debian's libpostgresql-jdbc-java), run as a single source
// file: java -cp postgresql.jar Scenario.java MODE HOST PORT DB BASE APP_USER:PW SUPPORT_USER:PW PLAIN_USER:PW [OLD_BASE]
// (OLD_BASE: the base of a run before `keys rotate`, for the "rotated" check).
// MODE: default (prepareThreshold 5), threshold1 (server-prepared from the first execution), binary
// (threshold 1 and binaryTransfer), rewrite (reWriteBatchedInserts: executeBatch as multi-row VALUES). Prints one JSON object {check: "ok" | "n/a" | "<what went wrong>"}.
// pgJDBC sends later executions of a server-prepared statement as Bind + Execute only.

import java.sql.*;
import java.util.*;
import org.postgresql.copy.CopyManager;
import org.postgresql.PGConnection;

public class Scenario {
    interface Check { Object run() throws Exception; }

    static String mode, host, db;
    static int port, base;
    static Map<String, String[]> users = new HashMap<>();
    static Map<String, Connection> conns = new HashMap<>();

    static Connection conn(String role) throws SQLException {
        if (!conns.containsKey(role)) {
            Properties p = new Properties();
            p.setProperty("user", users.get(role)[0]);
            p.setProperty("password", users.get(role)[1]);
            p.setProperty("sslmode", "disable");
            if (!mode.equals("default")) p.setProperty("prepareThreshold", "1");
            p.setProperty("binaryTransfer", mode.equals("binary") ? "true" : "false");
            if (mode.equals("rewrite")) p.setProperty("reWriteBatchedInserts", "true");
            conns.put(role, DriverManager.getConnection("jdbc:postgresql://" + host + ":" + port + "/" + db, p));
        }
        return conns.get(role);
    }

    static List<List<Object>> q(String role, String sql, Object... params) throws SQLException {
        try (PreparedStatement st = conn(role).prepareStatement(sql)) {
            return run(st, params);
        }
    }

    static List<List<Object>> run(PreparedStatement st, Object... params) throws SQLException {
        for (int i = 0; i < params.length; i++) st.setObject(i + 1, params[i]);
        List<List<Object>> out = new ArrayList<>();
        if (!st.execute()) return out;
        try (ResultSet rs = st.getResultSet()) {
            int n = rs.getMetaData().getColumnCount();
            while (rs.next()) {
                List<Object> row = new ArrayList<>();
                for (int i = 1; i <= n; i++) row.add(rs.getObject(i));
                out.add(row);
            }
        }
        return out;
    }

    static String json(String s) {
        return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", " ") + "\"";
    }

    public static void main(String[] a) throws Exception {
        mode = a[0]; host = a[1]; port = Integer.parseInt(a[2]); db = a[3]; base = Integer.parseInt(a[4]);
        String[] roles = {"app", "support", "plain"};
        for (int i = 0; i < 3; i++) users.put(roles[i], a[5 + i].split(":", 2));
        int id = base + 1;
        String email = "w" + base + "@example.com", phone = String.format("+1 555 %06d", base), ssn = base + "-11-1111";
        LinkedHashMap<String, Check> checks = new LinkedHashMap<>();
        checks.put("write", () -> { q("app", "INSERT INTO customers (id, email, phone, ssn, salary) VALUES (?, ?, ?, ?, ?)", id, email, phone, ssn, 5000); return true; });
        checks.put("read", () -> {
            List<List<Object>> r = q("app", "SELECT email, phone, ssn, salary FROM customers WHERE id = ?", id);
            return r.equals(List.of(List.of(email, phone, ssn, 5000))) ? true : r.toString();
        });
        checks.put("lookup", () -> {
            List<List<Object>> r = q("app", "SELECT id FROM customers WHERE email = ?", email);
            return r.equals(List.of(List.of(id))) ? true : r.toString();
        });
        checks.put("update", () -> {
            q("app", "UPDATE customers SET salary = ? WHERE email = ?", 6000, email);
            List<List<Object>> r = q("app", "SELECT salary FROM customers WHERE id = ?", id);
            return r.equals(List.of(List.of(6000))) ? true : r.toString();
        });
        checks.put("masked", () -> {
            List<List<Object>> r = q("support", "SELECT phone FROM customers WHERE id = ?", id);
            String v = r.size() == 1 ? (String) r.get(0).get(0) : null;
            return v != null && !v.equals(phone) && v.endsWith(phone.substring(phone.length() - 4)) ? true : String.valueOf(r);
        });
        checks.put("refusal", () -> {
            try {
                return "not refused: " + q("plain", "SELECT email FROM customers WHERE id = ?", id);
            } catch (SQLException e) {
                return "42501".equals(e.getSQLState()) && e.getMessage().contains("pgcloak:") ? true : e.getSQLState() + " " + e.getMessage();
            }
        });
        checks.put("repeat10", () -> {
            // One PreparedStatement executed ten times: after prepareThreshold it is server-prepared
            // and pgJDBC sends only Bind + Execute.
            try (PreparedStatement st = conn("app").prepareStatement("SELECT email, salary FROM customers WHERE email = ?")) {
                for (int i = 0; i < 10; i++) {
                    List<List<Object>> r = run(st, email);
                    if (!r.equals(List.of(List.of(email, 6000)))) return "execution " + (i + 1) + ": " + r;
                }
            }
            return true;
        });
        checks.put("batch", () -> {
            try (PreparedStatement st = conn("app").prepareStatement("INSERT INTO customers (id, email, salary) VALUES (?, ?, ?)")) {
                for (int i = 0; i < 20; i++) {
                    st.setInt(1, base + 100 + i); st.setString(2, "b" + (base + i) + "@example.com"); st.setInt(3, 100 * i);
                    st.addBatch();
                }
                st.executeBatch();
            }
            List<List<Object>> r = q("app", "SELECT id, salary FROM customers WHERE email = ?", "b" + (base + 7) + "@example.com");
            return r.equals(List.of(List.of(base + 107, 700))) ? true : r.toString();
        });
        checks.put("copy", () -> {
            StringBuilder data = new StringBuilder();
            for (int i = 0; i < 5; i++) data.append(base + 200 + i).append('\t').append("c" + (base + i) + "@example.com").append('\t').append(10 * i).append('\n');
            CopyManager cm = conn("app").unwrap(PGConnection.class).getCopyAPI();
            long n = cm.copyIn("COPY customers (id, email, salary) FROM STDIN", new java.io.StringReader(data.toString()));
            List<List<Object>> r = q("app", "SELECT email, salary FROM customers WHERE id = ?", base + 203);
            return n == 5 && r.equals(List.of(List.of("c" + (base + 3) + "@example.com", 30))) ? true : n + " " + r;
        });
        checks.put("cancel", () -> {
            try (Statement st = conn("app").createStatement()) {
                new Thread(() -> { try { Thread.sleep(1000); st.cancel(); } catch (Exception e) { } }).start();
                try {
                    st.execute("SELECT pg_sleep(10)");
                    return "not cancelled";
                } catch (SQLException e) {
                    return "57014".equals(e.getSQLState()) ? true : e.getSQLState() + " " + e.getMessage();
                }
            }
        });
        Integer oldBase = a.length > 8 ? Integer.valueOf(a[8]) : null;
        checks.put("rotated", () -> {
            // Rows written under the previous key version are found after `keys rotate`.
            if (oldBase == null) return "n/a";
            String oldEmail = "w" + oldBase + "@example.com", oldPhone = String.format("+1 555 %06d", oldBase);
            try (PreparedStatement st = conn("app").prepareStatement("SELECT id, email FROM customers WHERE email = ?")) {
                for (int i = 0; i < 6; i++) {
                    List<List<Object>> r = run(st, oldEmail);
                    if (!r.equals(List.of(List.of(oldBase + 1, oldEmail)))) return "lookup " + (i + 1) + " of a row of the older key version: " + r;
                }
            }
            List<List<Object>> r = q("app", "SELECT id FROM customers WHERE phone = ?", oldPhone);
            return r.equals(List.of(List.of(oldBase + 1))) ? true : "phone lookup: " + r;
        });
        StringBuilder out = new StringBuilder("{");
        for (Map.Entry<String, Check> c : checks.entrySet()) {
            String r;
            try {
                Object v = c.getValue().run();
                r = Boolean.TRUE.equals(v) ? "ok" : String.valueOf(v);
            } catch (Exception e) {
                r = e.getClass().getSimpleName() + ": " + e.getMessage();
            }
            if (out.length() > 1) out.append(", ");
            out.append(json(c.getKey())).append(": ").append(json(r.length() > 300 ? r.substring(0, 300) : r));
        }
        System.out.println(out.append("}"));
        for (Connection c : conns.values()) c.close();
    }
}
